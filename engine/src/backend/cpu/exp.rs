//! The CPU kernels' exponential: Cephes' single-precision one (a degree-5 polynomial after
//! reduction by ln 2, within about one ulp), written once with AVX2 and FMA (`exp8`) and
//! once in portable Rust (`exp`) with the same operations in the same order: both give
//! the same bits, so a result does not depend on the CPU path or on how many values
//! shared a vector.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts: `n * LN2_HIGH` is exact for the `n` that occur.
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
/// `exp(r) ≈ 1 + r + r² · p(r)`, `p` in Horner order from the highest power.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Inputs are clamped to where `2^n` is a normal float: results stay finite and normal
/// (at most about 2.4e38, at least about 1.2e-38).
const MIN_INPUT: f32 = -87.336_54;
const MAX_INPUT: f32 = 88.376_26;

/// The portable exponential: the same steps as `exp8`, lane by lane.
pub(crate) fn exp(x: f32) -> f32 {
    // As `_mm256_max_ps`/`_mm256_min_ps`: a NaN input becomes MIN_INPUT.
    let x = if x > MIN_INPUT { x } else { MIN_INPUT };
    let x = if x < MAX_INPUT { x } else { MAX_INPUT };
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HIGH, x);
    let r = (-n).mul_add(LN2_LOW, r);
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(r, *c);
    }
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Eight exponentials at once.
///
/// # Safety
/// The CPU must support AVX2 and FMA (the caller's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: AVX2 and FMA are enabled by the caller.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_set1_ps(MIN_INPUT));
        let x = _mm256_min_ps(x, _mm256_set1_ps(MAX_INPUT));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HIGH), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LOW), r);
        let mut p = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let e = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(e, _mm256_castsi256_ps(bits))
    }
}

/// `xs[i] = exp(xs[i] - shift)`, eight at a time where the CPU has AVX2 and FMA, with the
/// same bits as `exp` one by one.
pub(crate) fn exp_shifted_in_place(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        unsafe { exp_shifted_avx2(xs, shift) };
        return;
    }
    for x in xs {
        *x = exp(*x - shift);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(xs: &mut [f32], shift: f32) {
    let mut chunks = xs.chunks_exact_mut(8);
    for chunk in chunks.by_ref() {
        // SAFETY: eight floats in and out; the features are enabled.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), _mm256_set1_ps(shift));
            _mm256_storeu_ps(chunk.as_mut_ptr(), exp8(x));
        }
    }
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Inputs across the range, the clamps and beyond, zeros, and values at halves of
    /// ln 2 multiples (where the reduction rounds).
    pub(crate) fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0523).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 87.0, 88.3, 88.5, 100.0, -87.0, -87.4, -120.0,
        ]);
        xs.extend((-40..40).map(|i| (i as f32 + 0.5) * std::f32::consts::LN_2));
        xs
    }

    #[test]
    fn exponential_is_within_two_ulps_where_it_is_not_clamped() {
        for x in inputs()
            .into_iter()
            .filter(|x| (MIN_INPUT..MAX_INPUT).contains(x))
        {
            let exact = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - exact) / exact).abs() < 2.5e-7,
                "exp({x}) = {got}, exactly {exact}"
            );
        }
    }

    #[test]
    fn simd_and_portable_give_the_same_bits() {
        let xs = inputs();
        for shift in [0.0, 3.25, -1.5] {
            let mut simd = xs.clone();
            exp_shifted_in_place(&mut simd, shift);
            for (x, s) in xs.iter().zip(&simd) {
                assert_eq!(exp(*x - shift).to_bits(), s.to_bits(), "exp({x} - {shift})");
            }
        }
    }
}
