//! CPU kernels with runtime SIMD dispatch (AVX2+FMA, with a portable fallback).

pub mod qmatmul;
