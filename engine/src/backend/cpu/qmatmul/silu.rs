//! The fused feed-forward kernel's epilogue, `silu(g) · u`, eight values at a time. Its
//! exponential is Cephes' single-precision one (a degree-5 polynomial after reduction by
//! ln 2, within about one ulp), written once with AVX2 and FMA and once in portable Rust
//! with the same operations in the same order: both give the same bits, so a token's
//! result does not depend on the CPU path or on how many tokens share its tile.

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
/// Inputs are clamped to where `2^n` is a normal float: the results stay finite and
/// normal, and `silu` is exact enough at both ends (`x` itself, or nearly zero).
const MIN_INPUT: f32 = -87.336_54;
const MAX_INPUT: f32 = 88.376_26;

/// `out[i] = silu(g[i]) * u[i]` over the shortest of the three.
pub(super) fn gated(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = g.len().min(u.len()).min(out.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        for ((g, u), out) in g[..n].chunks(8).zip(u.chunks(8)).zip(out.chunks_mut(8)) {
            let whole = (
                <&[f32; 8]>::try_from(g),
                <&[f32; 8]>::try_from(u),
                <&mut [f32; 8]>::try_from(&mut *out),
            );
            if let (Ok(g), Ok(u), Ok(out)) = whole {
                // SAFETY: the features were just detected.
                *out = unsafe { gated8(g, u) };
                continue;
            }
            // A last run of fewer than eight, padded.
            let (mut gs, mut us) = ([0f32; 8], [0f32; 8]);
            gs[..g.len()].copy_from_slice(g);
            us[..u.len()].copy_from_slice(u);
            // SAFETY: as above.
            let products = unsafe { gated8(&gs, &us) };
            out.copy_from_slice(&products[..out.len()]);
        }
        return;
    }
    for ((o, &g), &u) in out[..n].iter_mut().zip(g).zip(u) {
        *o = silu(g) * u;
    }
}

/// `x · sigmoid(x)`, as `x / (1 + exp(-x))`.
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The portable exponential: the same steps as `exp8`, lane by lane.
fn exp(x: f32) -> f32 {
    // As `_mm256_max_ps`/`_mm256_min_ps`: a NaN input becomes MIN_INPUT (silu of a NaN is
    // still NaN: `x` divides).
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
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g8));
        let silu = _mm256_div_ps(g8, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr())),
        );
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs across the range, the clamps and beyond, zeros, and values at halves of
    /// ln 2 multiples (where the reduction rounds).
    fn inputs() -> Vec<f32> {
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
