//! Compute backends. The CPU: candle's tensor ops plus our own SIMD kernels for the
//! quantized matrix multiplications that dominate decoding. CUDA: our own kernels (compiled
//! by NVRTC at start) and cuBLAS, loaded at run time; the model does not run on it yet.

pub mod cpu;
pub mod cuda;
