//! The AVX2/FMA/F16C kernels. Every one sums in the order of llama.cpp's AVX2 `vec_dot`
//! for its format, lane by lane, so that a token's result does not depend on the kernel
//! (one row, four or eight) that computed it.

use std::arch::x86_64::*;

use super::quantize::{Group8Block, GroupBlock, QuantizedRow};
use super::{BLOCK, Q4_1_BYTES, Q5_0_BYTES, Q8_0_BYTES};

/// `super::quantize_block`, vectorized, with the same results bit for bit: the same
/// products, rounded half away from zero, and an exact integer sum.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_block(chunk: &[f32], values: &mut [i8]) -> (f32, f32) {
    assert!(chunk.len() >= BLOCK && values.len() >= BLOCK);
    // SAFETY (whole body): 32 values in and out, checked above.
    unsafe {
        let input = chunk.as_ptr();
        let v = [0, 8, 16, 24].map(|at| _mm256_loadu_ps(input.add(at)));
        let sign = _mm256_set1_ps(-0.0);
        let abs = v.map(|x| _mm256_andnot_ps(sign, x));
        let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let max4 = _mm_max_ps(
            _mm256_castps256_ps128(max8),
            _mm256_extractf128_ps::<1>(max8),
        );
        let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
        let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_shuffle_ps::<0x55>(max2, max2)));
        let scale = amax / 127.0;
        let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let q = v.map(|x| {
            let x = _mm256_mul_ps(x, inverse);
            // roundf: truncate, then step away from zero when the dropped part is at
            // least one half (exact: |x| < 2^23).
            let truncated = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let dropped = _mm256_andnot_ps(sign, _mm256_sub_ps(x, truncated));
            let away = _mm256_cmp_ps::<_CMP_GE_OQ>(dropped, _mm256_set1_ps(0.5));
            let step = _mm256_or_ps(_mm256_and_ps(x, sign), _mm256_set1_ps(1.0));
            _mm256_cvttps_epi32(_mm256_add_ps(truncated, _mm256_and_ps(away, step)))
        });
        // Bytes in order: packing interleaves 128-bit lanes, the permutation undoes it.
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            ),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        _mm256_storeu_si256(values.as_mut_ptr().cast(), bytes);
        let sum8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum8),
            _mm256_extracti128_si256::<1>(sum8),
        );
        let sum2 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum2, _mm_shuffle_epi32::<1>(sum2)));
        (
            super::quantize::round_to_f16(scale),
            super::quantize::round_to_f16(scale * sum as f32),
        )
    }
}

/// Bytes `at..at + 4` in every 32-bit lane.
#[inline(always)]
unsafe fn broadcast4(bytes: &[u8], at: usize) -> __m256i {
    debug_assert!(at + 4 <= bytes.len());
    // SAFETY: the caller keeps `at + 4` within `bytes`.
    unsafe { _mm256_set1_epi32(bytes.as_ptr().add(at).cast::<i32>().read_unaligned()) }
}

/// The eight slices' accumulators added in `horizontal_sum`'s order, lane by lane: a
/// token's result in a group of eight is bit for bit its result alone.
#[inline(always)]
unsafe fn sum_slices(acc: &[__m256; 8]) -> __m256 {
    // SAFETY: AVX is enabled by the callers.
    unsafe {
        let even = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let odd = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        _mm256_add_ps(even, odd)
    }
}

/// Adds slice `s` of a block of signed weights (`weights`: the slice in every lane)
/// times a group of eight tokens, one token per lane, to `acc`: the one-row kernels'
/// lane `s`, for each token.
#[inline(always)]
unsafe fn dot8_signed_slice(weights: __m256i, ds: __m256, xs: &[i8; BLOCK], acc: &mut __m256) {
    // SAFETY: an aligned 32-byte slice (`Group8Block` is 32-aligned); AVX2 is enabled by
    // the callers.
    unsafe {
        let xs = _mm256_load_si256(xs.as_ptr().cast());
        // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
            _mm256_maddubs_epi16(
                _mm256_sign_epi8(weights, weights),
                _mm256_sign_epi8(xs, weights),
            ),
            _mm256_set1_epi16(1),
        ));
        *acc = _mm256_fmadd_ps(ds, products, *acc);
    }
}

/// Each token's block scale times the weight block's: `d * scale`, lane by lane.
#[inline(always)]
unsafe fn scales8(d: f32, xb: &Group8Block) -> __m256 {
    // SAFETY: eight f32 at an aligned address.
    unsafe { _mm256_mul_ps(_mm256_set1_ps(d), _mm256_load_ps(xb.scales.as_ptr())) }
}

/// # Safety
/// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q4_1`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot8_q4_1(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut min_terms = _mm256_setzero_ps();
    for (block, xb) in w.chunks_exact(Q4_1_BYTES).zip(x) {
        // SAFETY (whole body): 16 bytes of nibbles at block[4..20]; aligned fields in `xb`.
        unsafe {
            let (d, min) = two_f16(block);
            let ds = scales8(d, xb);
            let sums = _mm256_load_ps(xb.sums.as_ptr());
            min_terms = _mm256_add_ps(min_terms, _mm256_mul_ps(_mm256_set1_ps(min), sums));
            // Packed byte j holds value j (low nibble) and value j + 16 (high nibble):
            // four packed bytes are slice s and slice s + 4.
            for s in 0..4 {
                let packed = broadcast4(block, 4 + 4 * s);
                let low = _mm256_and_si256(packed, mask);
                let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
                for (slice, weights) in [(s, low), (s + 4, high)] {
                    let xs = _mm256_load_si256(xb.slices[slice].as_ptr().cast());
                    let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                        _mm256_maddubs_epi16(weights, xs),
                        ones,
                    ));
                    acc[slice] = _mm256_fmadd_ps(ds, products, acc[slice]);
                }
            }
        }
    }
    let total = _mm256_add_ps(unsafe { sum_slices(&acc) }, min_terms);
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
}

/// # Safety
/// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q8_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot8_q8_0(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
    let mut acc = [_mm256_setzero_ps(); 8];
    for (block, xb) in w.chunks_exact(Q8_0_BYTES).zip(x) {
        // SAFETY: 32 bytes of values at block[2..34].
        unsafe {
            let d = f16_scale(block);
            let ds = scales8(d, xb);
            for (s, a) in acc.iter_mut().enumerate() {
                dot8_signed_slice(broadcast4(block, 2 + 4 * s), ds, &xb.slices[s], a);
            }
        }
    }
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum_slices(&acc)) };
}

/// # Safety
/// AVX2/FMA/F16C. Each lane sums in the same order as `dot_q5_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot8_q5_0(w: &[u8], x: &[Group8Block], out: &mut [f32; 8]) {
    let mut acc = [_mm256_setzero_ps(); 8];
    for (block, xb) in w.chunks_exact(Q5_0_BYTES).zip(x) {
        // SAFETY: a whole Q5_0 block.
        unsafe {
            let d = f16_scale(block);
            let ds = scales8(d, xb);
            let values = q5_0_bytes(block);
            for (s, a) in acc.iter_mut().enumerate() {
                let slice = _mm256_permutevar8x32_epi32(values, _mm256_set1_epi32(s as i32));
                dot8_signed_slice(slice, ds, &xb.slices[s], a);
            }
        }
    }
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum_slices(&acc)) };
}

/// The two f16 values at the start of a block, as f32.
#[inline(always)]
unsafe fn two_f16(block: &[u8]) -> (f32, f32) {
    // SAFETY: every block starts with at least 4 bytes; F16C comes with AVX2 here.
    unsafe {
        let raw = _mm_cvtsi32_si128(i32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        let pair = _mm_cvtph_ps(raw);
        (
            _mm_cvtss_f32(pair),
            _mm_cvtss_f32(_mm_shuffle_ps::<0x55>(pair, pair)),
        )
    }
}

/// The f16 at the start of a block (Q5_0's and Q8_0's scale), as f32.
///
/// In assembly because LLVM narrows any intrinsic form of this load to a 16-bit insert into
/// a register it picks freely, often the loop's accumulator: every block then waited on
/// the previous block's multiply-add (a Q5_0 row ran at 4.3 ns a block instead of 2).
/// `vmovd` writes the whole register, so nothing is carried over.
#[inline(always)]
unsafe fn f16_scale(block: &[u8]) -> f32 {
    assert!(block.len() >= 2);
    let scale: f32;
    // SAFETY: two readable bytes, checked above; F16C comes with AVX2 where this runs.
    unsafe {
        std::arch::asm!(
            "movzx {bits:e}, word ptr [{at}]",
            "vmovd {scale}, {bits:e}",
            "vcvtph2ps {scale}, {scale}",
            at = in(reg) block.as_ptr(),
            bits = out(reg) _,
            scale = out(xmm_reg) scale,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    scale
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let low = _mm256_castps256_ps128(v);
    let high = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(low, high);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds `x.scales.len()` Q4_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / Q4_1_BYTES);
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut min_terms = 0f32;
    for b in 0..blocks {
        let block = &w[b * Q4_1_BYTES..(b + 1) * Q4_1_BYTES];
        let (d, min) = unsafe { two_f16(block) };
        // SAFETY: 16 bytes at block[4..20] and 32 at values[b*32..], in bounds.
        let packed = unsafe { _mm_loadu_si128(block.as_ptr().add(4).cast()) };
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        let weights = _mm256_set_m128i(high, low);
        let xs = unsafe { _mm256_loadu_si256(x.values.as_ptr().add(b * BLOCK).cast()) };
        let pairs = _mm256_maddubs_epi16(weights, xs);
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.scales[b]), sums, acc);
        min_terms += min * x.sums[b];
    }
    unsafe { horizontal_sum(acc) + min_terms }
}

/// # Safety
/// AVX2/FMA/F16C. Sums in the same order as `dot_q4_1`, so a row's result does not
/// depend on whether it was computed alone or in a group.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot4_q4_1(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut min_terms = _mm_setzero_ps();
    for (block, xb) in w.chunks_exact(Q4_1_BYTES).zip(x) {
        let (d, min) = unsafe { two_f16(block) };
        // SAFETY: 16 bytes at block[4..20]; 32 in each row's values.
        let packed = unsafe { _mm_loadu_si128(block.as_ptr().add(4).cast()) };
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        let weights = _mm256_set_m128i(high, low);
        // A product, then a sum: as `min_terms += min * sums[b]` rounds in `dot_q4_1`.
        let sums = unsafe { _mm_loadu_ps(xb.sums.as_ptr()) };
        min_terms = _mm_add_ps(min_terms, _mm_mul_ps(_mm_set1_ps(min), sums));
        for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
            let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
            let products =
                _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(weights, xs), ones));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
        }
    }
    let mut mins = [0f32; 4];
    unsafe { _mm_storeu_ps(mins.as_mut_ptr(), min_terms) };
    for r in 0..4 {
        out[r] = unsafe { horizontal_sum(acc[r]) } + mins[r];
    }
}

/// # Safety
/// AVX2/FMA/F16C. Sums in the same order as `dot_q8_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot4_q8_0(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (block, xb) in w.chunks_exact(Q8_0_BYTES).zip(x) {
        let d = unsafe { f16_scale(block) };
        // SAFETY: 32 bytes at block[2..34] and in each row's values.
        let weights = unsafe { _mm256_loadu_si256(block.as_ptr().add(2).cast()) };
        let abs_weights = _mm256_sign_epi8(weights, weights);
        for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
            let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
            let signed_xs = _mm256_sign_epi8(xs, weights);
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                _mm256_maddubs_epi16(abs_weights, signed_xs),
                ones,
            ));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
        }
    }
    for r in 0..4 {
        out[r] = unsafe { horizontal_sum(acc[r]) };
    }
}

/// A Q5_0 block's 32 values as signed bytes in -16..=15: the low nibbles, with 0xF0
/// or'ed in where the fifth bit is clear (nibble - 16 in two's complement).
#[inline(always)]
unsafe fn q5_0_bytes(block: &[u8]) -> __m256i {
    // SAFETY: a Q5_0 block is 22 bytes: the high bits at 2..6, nibbles at 6..22.
    unsafe {
        let high_bits = i32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        // Byte j of the vector takes byte j / 8 of the bits...
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(high_bits),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        // ...and is all ones once every bit but its own (j % 8) is set too.
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let bit_set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
        let packed = _mm_loadu_si128(block.as_ptr().add(6).cast());
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        let nibbles = _mm256_set_m128i(high, low);
        _mm256_or_si256(
            nibbles,
            _mm256_andnot_si256(bit_set, _mm256_set1_epi8(0xF0_u8 as i8)),
        )
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `x.scales.len()` Q5_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0(w: &[u8], x: &QuantizedRow) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for ((block, xs), scale) in w
        .chunks_exact(Q5_0_BYTES)
        .zip(x.values.chunks_exact(BLOCK))
        .zip(&x.scales)
    {
        let d = unsafe { f16_scale(block) };
        let weights = unsafe { q5_0_bytes(block) };
        // SAFETY: 32 values per block.
        let xs = unsafe { _mm256_loadu_si256(xs.as_ptr().cast()) };
        // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
            _mm256_maddubs_epi16(
                _mm256_sign_epi8(weights, weights),
                _mm256_sign_epi8(xs, weights),
            ),
            ones,
        ));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, acc);
    }
    unsafe { horizontal_sum(acc) }
}

/// # Safety
/// AVX2/FMA/F16C. Sums in the same order as `dot_q5_0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot4_q5_0(w: &[u8], x: &[GroupBlock], out: &mut [f32; 4]) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (block, xb) in w.chunks_exact(Q5_0_BYTES).zip(x) {
        let d = unsafe { f16_scale(block) };
        let weights = unsafe { q5_0_bytes(block) };
        let abs_weights = _mm256_sign_epi8(weights, weights);
        for ((a, values), scale) in acc.iter_mut().zip(&xb.values).zip(xb.scales) {
            let xs = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(
                _mm256_maddubs_epi16(abs_weights, _mm256_sign_epi8(xs, weights)),
                ones,
            ));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), products, *a);
        }
    }
    for r in 0..4 {
        out[r] = unsafe { horizontal_sum(acc[r]) };
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w` holds `x.scales.len()` Q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / Q8_0_BYTES);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let block = &w[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
        let d = unsafe { f16_scale(block) };
        // SAFETY: 32 bytes at block[2..34] and at values[b*32..], in bounds.
        let weights = unsafe { _mm256_loadu_si256(block.as_ptr().add(2).cast()) };
        let xs = unsafe { _mm256_loadu_si256(x.values.as_ptr().add(b * BLOCK).cast()) };
        // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
        let abs_weights = _mm256_sign_epi8(weights, weights);
        let signed_xs = _mm256_sign_epi8(xs, weights);
        let pairs = _mm256_maddubs_epi16(abs_weights, signed_xs);
        let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.scales[b]), sums, acc);
    }
    unsafe { horizontal_sum(acc) }
}
