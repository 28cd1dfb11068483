//! Compute backends. Today the CPU: candle's tensor ops plus our own SIMD kernels for the
//! quantized matrix multiplications that dominate decoding.

pub mod cpu;
