//! The fused feed-forward kernel's epilogue, `silu(g) · u`, eight values at a time with
//! the shared exponential (`backend::cpu::exp`), whose portable twin gives the same bits:
//! a token's result does not depend on the CPU path or on how many tokens share its tile.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::backend::cpu::exp;

/// `out[i] = silu(g[i]) * u[i]` over the shortest of the three: eight at a time where the
/// CPU has AVX2 and FMA, the rest one by one (the same bits either way).
pub(super) fn gated(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = g.len().min(u.len()).min(out.len());
    let (g, u, out) = (&g[..n], &u[..n], &mut out[..n]);
    #[allow(unused_mut)] // only the x86_64 path advances it
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let (outs, _) = out.as_chunks_mut::<8>();
        for ((out, g), u) in outs
            .iter_mut()
            .zip(g.as_chunks::<8>().0)
            .zip(u.as_chunks::<8>().0)
        {
            // SAFETY: the features were just detected.
            *out = unsafe { gated8(g, u) };
        }
        done = n - n % 8;
    }
    for ((o, &g), &u) in out[done..].iter_mut().zip(&g[done..]).zip(&u[done..]) {
        *o = silu(g) * u;
    }
}

/// `x · sigmoid(x)`, as `x / (1 + exp(-x))`.
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + exp::exp(-x))
}

/// Eight `silu(g) * u` at once.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated8(g: &[f32; 8], u: &[f32; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: eight floats in and out; the features are enabled.
    unsafe {
        let g8 = _mm256_loadu_ps(g.as_ptr());
        let e = exp::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g8));
        let silu = _mm256_div_ps(g8, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr())),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::cpu::exp::tests::inputs;

    #[test]
    fn silu_is_close_to_exact_everywhere() {
        for x in inputs() {
            let exact = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            assert!(
                (got - exact).abs() <= 3e-7 * exact.abs() + 1e-30,
                "silu({x}) = {got}, exactly {exact}"
            );
        }
        assert!(silu(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_and_portable_give_the_same_bits() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
            return;
        }
        let xs = inputs();
        let us: Vec<f32> = (0..xs.len()).map(|i| (i % 7) as f32 - 2.5).collect();
        let mut simd = vec![0f32; xs.len()];
        gated(&xs, &us, &mut simd);
        for ((x, u), s) in xs.iter().zip(&us).zip(&simd) {
            assert_eq!((silu(*x) * u).to_bits(), s.to_bits(), "silu({x}) * {u}");
        }
    }
}
