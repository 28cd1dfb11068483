//! The CPU backend: `LlamaModel` (candle plus our kernels) over the f32 paged KV cache, and
//! our CPU kernels with runtime SIMD dispatch (AVX2+FMA, with a portable fallback).

pub(crate) mod attention;
mod exp;
pub mod qmatmul;
mod runner;

pub use runner::CpuRunner;
