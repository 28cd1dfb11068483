//! The AVX2/FMA/F16C kernels, generic over the weight format (`Format`). They sum in
//! the order `kernels.rs` sets out for every kernel: each block's exact integer dot
//! product, scaled once, into partial sum `block % 8`. A token's result is the same bits
//! whether it was computed alone (`dot`), in a group of four or eight (`dot_group`), or
//! by the portable kernels.

use std::arch::x86_64::*;

use super::quantize::{Group4Block, Group8Block, GroupBlock, QuantizedRow};
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

/// What the shared loops need from one weight format.
pub(super) trait Format {
    const BYTES: usize;
    /// Whether blocks carry a min (Q4_1), which adds `min * sum(x)` per block.
    const HAS_MIN: bool;

    /// The block's scale and min (zero where the format has none).
    unsafe fn scale_and_min(block: &[u8]) -> (f32, f32);

    /// One token: eight lanes that add up to the block's exact integer dot product with
    /// the 32 values at `xs`.
    unsafe fn row_products(block: &[u8], xs: *const i8) -> __m256i;

    /// Eight tokens, one per lane: the block's exact integer dot product with each.
    unsafe fn group_products(block: &[u8], xb: &Group8Block) -> __m256i;

    /// Four tokens, one per 64-bit lane: the block's exact integer dot product with each,
    /// in 32-bit lanes 0, 2, 4 and 6 (the odd lanes hold other integers).
    unsafe fn group4_products(block: &[u8], xb: &Group4Block) -> __m256i;
}

pub(super) struct Q4_1;
pub(super) struct Q5_0;
pub(super) struct Q8_0;

impl Format for Q4_1 {
    const BYTES: usize = Q4_1_BYTES;
    const HAS_MIN: bool = true;

    #[inline(always)]
    unsafe fn scale_and_min(block: &[u8]) -> (f32, f32) {
        unsafe { two_f16(block) }
    }

    #[inline(always)]
    unsafe fn row_products(block: &[u8], xs: *const i8) -> __m256i {
        // SAFETY: 16 bytes of nibbles at block[4..20]; the caller vouches for `xs`.
        unsafe {
            let weights = q4_1_bytes(block);
            let xs = _mm256_loadu_si256(xs.cast());
            _mm256_madd_epi16(_mm256_maddubs_epi16(weights, xs), _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn group_products(block: &[u8], xb: &Group8Block) -> __m256i {
        // SAFETY: as above.
        unsafe { Self::unpacked_products(&Self::unpack(block), xb) }
    }

    #[inline(always)]
    unsafe fn group4_products(block: &[u8], xb: &Group4Block) -> __m256i {
        // SAFETY: 16 bytes of nibbles at block[4..20]; `Group4Block`'s slices are
        // 32-aligned.
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            // Packed bytes 0..8 hold values 0..8 (low nibbles) and 16..24 (high); bytes
            // 8..16 values 8..16 and 24..32.
            let first = _mm256_set1_epi64x(block[4..12].as_ptr().cast::<i64>().read_unaligned());
            let second = _mm256_set1_epi64x(block[12..20].as_ptr().cast::<i64>().read_unaligned());
            let weights = [
                _mm256_and_si256(first, mask),
                _mm256_and_si256(second, mask),
                _mm256_and_si256(_mm256_srli_epi16::<4>(first), mask),
                _mm256_and_si256(_mm256_srli_epi16::<4>(second), mask),
            ];
            let mut products = [_mm256_setzero_si256(); 4];
            for ((product, weights), xs) in products.iter_mut().zip(weights).zip(&xb.slices) {
                *product = _mm256_maddubs_epi16(weights, _mm256_load_si256(xs.as_ptr().cast()));
            }
            // Four slices' pair sums stay within ±15240: they add up in 16 bits.
            let pairs = _mm256_add_epi16(
                _mm256_add_epi16(products[0], products[1]),
                _mm256_add_epi16(products[2], products[3]),
            );
            pair_lanes(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

/// A format whose blocks two groups of eight tokens can share: unpacked once, multiplied
/// twice (`dot_group_pair`).
pub(super) trait PairFormat: Format {
    /// A block's weights, ready for any group's products.
    type Unpacked;

    unsafe fn unpack(block: &[u8]) -> Self::Unpacked;

    /// `group_products` from an unpacked block.
    unsafe fn unpacked_products(weights: &Self::Unpacked, xb: &Group8Block) -> __m256i;
}

impl PairFormat for Q4_1 {
    /// Slice `s` of the block's values in every 32-bit lane.
    type Unpacked = [__m256i; 8];

    #[inline(always)]
    unsafe fn unpack(block: &[u8]) -> Self::Unpacked {
        // SAFETY: 16 bytes of nibbles at block[4..20].
        unsafe {
            // The 16 packed bytes in both halves, as values 0..16 (low nibbles) and
            // 16..32 (high): slice s is then dword s % 4 of one of them, moved into every
            // lane by an in-lane shuffle.
            let mask = _mm256_set1_epi8(0x0F);
            let packed = _mm256_broadcastsi128_si256(_mm_loadu_si128(block[4..20].as_ptr().cast()));
            let low = _mm256_and_si256(packed, mask);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
            [
                _mm256_shuffle_epi32::<0x00>(low),
                _mm256_shuffle_epi32::<0x55>(low),
                _mm256_shuffle_epi32::<0xAA>(low),
                _mm256_shuffle_epi32::<0xFF>(low),
                _mm256_shuffle_epi32::<0x00>(high),
                _mm256_shuffle_epi32::<0x55>(high),
                _mm256_shuffle_epi32::<0xAA>(high),
                _mm256_shuffle_epi32::<0xFF>(high),
            ]
        }
    }

    #[inline(always)]
    unsafe fn unpacked_products(slices: &Self::Unpacked, xb: &Group8Block) -> __m256i {
        // SAFETY: `Group8Block`'s slices are 32-aligned.
        unsafe {
            // Weights 0..=15 times inputs within ±127: eight slices' pair sums stay
            // within ±30480, so they add up in 16 bits.
            let mut products = [_mm256_setzero_si256(); 8];
            for ((product, weights), xs) in products.iter_mut().zip(*slices).zip(&xb.slices) {
                *product = _mm256_maddubs_epi16(weights, _mm256_load_si256(xs.as_ptr().cast()));
            }
            let pairs = _mm256_add_epi16(
                _mm256_add_epi16(
                    _mm256_add_epi16(products[0], products[1]),
                    _mm256_add_epi16(products[2], products[3]),
                ),
                _mm256_add_epi16(
                    _mm256_add_epi16(products[4], products[5]),
                    _mm256_add_epi16(products[6], products[7]),
                ),
            );
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }
}

impl Format for Q5_0 {
    const BYTES: usize = Q5_0_BYTES;
    const HAS_MIN: bool = false;

    #[inline(always)]
    unsafe fn scale_and_min(block: &[u8]) -> (f32, f32) {
        (unsafe { f16_scale(block) }, 0.0)
    }

    #[inline(always)]
    unsafe fn row_products(block: &[u8], xs: *const i8) -> __m256i {
        // SAFETY: a whole block; the caller vouches for `xs`.
        unsafe { signed_row_products(q5_0_bytes(block), xs) }
    }

    // The groups use the values plus 16, unsigned, as maddubs's first operand (no sign
    // operations), and take 16 times each token's value sum off the total.
    #[inline(always)]
    unsafe fn group_products(block: &[u8], xb: &Group8Block) -> __m256i {
        // SAFETY: a whole block; aligned fields in `xb`.
        unsafe { Self::unpacked_products(&Self::unpack(block), xb) }
    }

    #[inline(always)]
    unsafe fn group4_products(block: &[u8], xb: &Group4Block) -> __m256i {
        // SAFETY: a whole block; aligned fields in `xb`.
        unsafe {
            let mut values = Aligned32([0; BLOCK]);
            _mm256_store_si256(values.0.as_mut_ptr().cast(), q5_0_unsigned_bytes(block));
            // As above: four slices' pair sums stay within ±31496.
            let mut pairs = _mm256_setzero_si256();
            for (s, xs) in xb.slices.iter().enumerate() {
                let xs = _mm256_load_si256(xs.as_ptr().cast());
                let eight = values.0.as_ptr().add(8 * s).cast::<i64>().read_unaligned();
                let weights = _mm256_set1_epi64x(eight);
                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(weights, xs));
            }
            let totals = pair_lanes(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
            let offsets = _mm256_load_si256(xb.value_sums.as_ptr().cast());
            _mm256_sub_epi32(totals, _mm256_slli_epi32::<4>(offsets))
        }
    }
}

impl PairFormat for Q5_0 {
    /// The block's values plus 16, unsigned, in order.
    type Unpacked = Aligned32;

    #[inline(always)]
    unsafe fn unpack(block: &[u8]) -> Self::Unpacked {
        let mut values = Aligned32([0; BLOCK]);
        // SAFETY: a whole block; 32 aligned bytes out.
        unsafe { _mm256_store_si256(values.0.as_mut_ptr().cast(), q5_0_unsigned_bytes(block)) };
        values
    }

    #[inline(always)]
    unsafe fn unpacked_products(values: &Self::Unpacked, xb: &Group8Block) -> __m256i {
        // SAFETY: 32 values; aligned fields in `xb`.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            // Weights 0..=31 times inputs within ±127: four slices' pair sums stay within
            // ±31496, so each half of the block adds up in 16 bits.
            let mut halves = [_mm256_setzero_si256(); 2];
            for (h, half) in halves.iter_mut().enumerate() {
                let mut pairs = _mm256_setzero_si256();
                for s in 4 * h..4 * h + 4 {
                    let xs = _mm256_load_si256(xb.slices[s].as_ptr().cast());
                    let weights = broadcast4(&values.0, 4 * s);
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(weights, xs));
                }
                *half = _mm256_madd_epi16(pairs, ones);
            }
            let offsets = _mm256_load_si256(xb.value_sums.as_ptr().cast());
            _mm256_sub_epi32(
                _mm256_add_epi32(halves[0], halves[1]),
                _mm256_slli_epi32::<4>(offsets),
            )
        }
    }
}

impl Format for Q8_0 {
    const BYTES: usize = Q8_0_BYTES;
    const HAS_MIN: bool = false;

    #[inline(always)]
    unsafe fn scale_and_min(block: &[u8]) -> (f32, f32) {
        (unsafe { f16_scale(block) }, 0.0)
    }

    #[inline(always)]
    unsafe fn row_products(block: &[u8], xs: *const i8) -> __m256i {
        // SAFETY: 32 bytes of values at block[2..34]; the caller vouches for `xs`.
        unsafe { signed_row_products(_mm256_loadu_si256(block.as_ptr().add(2).cast()), xs) }
    }

    #[inline(always)]
    unsafe fn group_products(block: &[u8], xb: &Group8Block) -> __m256i {
        // SAFETY: 32 bytes of values at block[2..34]. Pair sums reach ±32512: each slice
        // widens to 32 bits on its own.
        unsafe { signed_group_products(&block[2..34], xb) }
    }

    #[inline(always)]
    unsafe fn group4_products(block: &[u8], xb: &Group4Block) -> __m256i {
        // SAFETY: 32 bytes of values at block[2..34].
        unsafe { signed_group4_products(&block[2..34], xb) }
    }
}

#[repr(C, align(32))]
pub(super) struct Aligned32([u8; BLOCK]);

/// A Q4_1 block's 32 values in order, as bytes 0..=15: byte j holds value j in its low
/// nibble and value j + 16 in its high one.
#[inline(always)]
unsafe fn q4_1_bytes(block: &[u8]) -> __m256i {
    // SAFETY: 16 bytes at block[4..20] of a 20-byte block.
    unsafe {
        let packed = _mm_loadu_si128(block[4..20].as_ptr().cast());
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        _mm256_set_m128i(high, low)
    }
}

/// Signed weights times one token's 32 values: eight lanes of four products each.
#[inline(always)]
unsafe fn signed_row_products(weights: __m256i, xs: *const i8) -> __m256i {
    // SAFETY: the caller vouches for 32 bytes at `xs`.
    unsafe {
        let xs = _mm256_loadu_si256(xs.cast());
        // maddubs needs one unsigned operand: move the weights' signs onto the inputs.
        let pairs = _mm256_maddubs_epi16(
            _mm256_sign_epi8(weights, weights),
            _mm256_sign_epi8(xs, weights),
        );
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }
}

/// Signed weights (32 bytes) times eight tokens, one per lane: each slice widens to 32 bits
/// on its own (Q8_0's pair sums reach ±32512).
#[inline(always)]
unsafe fn signed_group_products(weights: &[u8], xb: &Group8Block) -> __m256i {
    assert!(weights.len() >= BLOCK);
    // SAFETY: 32 bytes of weights, checked above; AVX2 is enabled by the callers.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut sums = _mm256_setzero_si256();
        for (s, xs) in xb.slices.iter().enumerate() {
            let xs = _mm256_load_si256(xs.as_ptr().cast());
            let weights = broadcast4(weights, 4 * s);
            let products = _mm256_maddubs_epi16(
                _mm256_sign_epi8(weights, weights),
                _mm256_sign_epi8(xs, weights),
            );
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, ones));
        }
        sums
    }
}

/// Signed weights (32 bytes) times four tokens, one per 64-bit lane: each slice widens to
/// 32 bits on its own (Q8_0's pair sums reach ±32512).
#[inline(always)]
unsafe fn signed_group4_products(weights: &[u8], xb: &Group4Block) -> __m256i {
    assert!(weights.len() >= BLOCK);
    // SAFETY: 32 bytes of weights, checked above; AVX2 is enabled by the callers.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut sums = _mm256_setzero_si256();
        for (s, xs) in xb.slices.iter().enumerate() {
            let xs = _mm256_load_si256(xs.as_ptr().cast());
            let eight = weights.as_ptr().add(8 * s).cast::<i64>().read_unaligned();
            let weights = _mm256_set1_epi64x(eight);
            let products = _mm256_maddubs_epi16(
                _mm256_sign_epi8(weights, weights),
                _mm256_sign_epi8(xs, weights),
            );
            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, ones));
        }
        pair_lanes(sums)
    }
}

/// Each 64-bit lane's two 32-bit sums added into its even lane.
#[inline(always)]
unsafe fn pair_lanes(sums: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled by the callers.
    unsafe { _mm256_add_epi32(sums, _mm256_srli_epi64::<32>(sums)) }
}

/// Bytes `at..at + 4` in every 32-bit lane.
#[inline(always)]
unsafe fn broadcast4(bytes: &[u8], at: usize) -> __m256i {
    debug_assert!(at + 4 <= bytes.len());
    // SAFETY: the caller keeps `at + 4` within `bytes`.
    unsafe { _mm256_set1_epi32(bytes.as_ptr().add(at).cast::<i32>().read_unaligned()) }
}

/// One weight row times one token.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<F: Format>(w: &[u8], x: &QuantizedRow) -> f32 {
    let blocks = x.scales.len().min(w.len() / F::BYTES);
    let full = blocks - blocks % 8;
    let mut partials = _mm256_setzero_ps();
    // Eight blocks at a time, block `b + j` in lane j.
    for b in (0..full).step_by(8) {
        let group = &w[b * F::BYTES..(b + 8) * F::BYTES];
        let mut products = [_mm256_setzero_si256(); 8];
        for (j, p) in products.iter_mut().enumerate() {
            let xs = &x.values[(b + j) * BLOCK..(b + j + 1) * BLOCK];
            // SAFETY: a whole block and its 32 values.
            *p = unsafe { F::row_products(&group[j * F::BYTES..], xs.as_ptr()) };
        }
        // SAFETY: eight blocks; eight f32 in each slice of `x`.
        unsafe {
            let totals = _mm256_cvtepi32_ps(lane_totals(&products));
            let (scales, mins) = group_scales::<F>(group);
            let x_scales = _mm256_loadu_ps(x.scales[b..b + 8].as_ptr());
            partials = _mm256_fmadd_ps(_mm256_mul_ps(scales, x_scales), totals, partials);
            if F::HAS_MIN {
                let sums = _mm256_loadu_ps(x.sums[b..b + 8].as_ptr());
                partials = _mm256_fmadd_ps(mins, sums, partials);
            }
        }
    }
    // The last blocks, fewer than eight, one after the other into a sum of their own.
    let mut last = 0f32;
    for b in full..blocks {
        let block = &w[b * F::BYTES..(b + 1) * F::BYTES];
        let xs = &x.values[b * BLOCK..(b + 1) * BLOCK];
        // SAFETY: a whole block and its 32 values.
        let (total, (d, min)) = unsafe {
            (
                lane_total(F::row_products(block, xs.as_ptr())),
                F::scale_and_min(block),
            )
        };
        last = (d * x.scales[b]).mul_add(total as f32, last);
        if F::HAS_MIN {
            last = min.mul_add(x.sums[b], last);
        }
    }
    unsafe { horizontal_sum(partials) + last }
}

/// The scales of eight consecutive blocks, lane j for block j, and (Q4_1) their mins: one
/// gather of each block's first four bytes (in scalar loads the vectors cost more).
#[inline(always)]
unsafe fn group_scales<F: Format>(group: &[u8]) -> (__m256, __m256) {
    assert!(group.len() >= 8 * F::BYTES);
    // SAFETY: the gather reads four bytes at the start of each of the eight blocks,
    // checked above; AVX2 and F16C are enabled by the callers.
    unsafe {
        let heads = _mm256_i32gather_epi32::<1>(
            group.as_ptr().cast(),
            _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(F::BYTES as i32),
            ),
        );
        // Per 128-bit half: the scales' f16 halves, then the mins'; then the scales of
        // both halves in the low 128 bits, the mins in the high ones.
        let halves = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(
            heads,
            _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
            ),
        ));
        let scales = _mm256_cvtph_ps(_mm256_castsi256_si128(halves));
        let mins = if F::HAS_MIN {
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(halves))
        } else {
            _mm256_setzero_ps()
        };
        (scales, mins)
    }
}

/// One weight row times a group of eight tokens (one per 32-bit lane) or four (one per
/// 64-bit lane).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_group<F: Format, const ROWS: usize>(
    w: &[u8],
    x: &[GroupBlock<ROWS>],
    out: &mut [f32; ROWS],
) where
    GroupBlock<ROWS>: GroupProducts,
{
    let blocks = x.len().min(w.len() / F::BYTES);
    let full = blocks - blocks % 8;
    let mut partials = [_mm256_setzero_ps(); 8];
    // Eight blocks at a time, block `j` of each eight into partial `j`: constant indices,
    // so that the loop carries nothing but two pointers.
    for (eight, xs) in w[..full * F::BYTES]
        .chunks_exact(8 * F::BYTES)
        .zip(x[..full].chunks_exact(8))
    {
        // Written out: as a loop, LLVM kept the partial sums in memory (Q8_0 0.734 -> 0.704
        // ns per token-block; the pair kernel, written out the same way, spilled and slowed).
        macro_rules! block {
            ($($j:literal)*) => {$(
                // SAFETY: a whole block (`eight` holds eight).
                partials[$j] = unsafe {
                    group_block::<F, ROWS>(partials[$j], &eight[$j * F::BYTES..], &xs[$j])
                };
            )*};
        }
        block!(0 1 2 3 4 5 6 7);
    }
    let mut last = _mm256_setzero_ps();
    for (block, xb) in w[full * F::BYTES..]
        .chunks_exact(F::BYTES)
        .zip(&x[full..blocks])
    {
        // SAFETY: a whole block.
        last = unsafe { group_block::<F, ROWS>(last, block, xb) };
    }
    let mut lanes = [0f32; 8];
    // SAFETY: AVX is enabled; eight f32 out.
    unsafe {
        let total = _mm256_add_ps(sum_partials(&partials), last);
        _mm256_storeu_ps(lanes.as_mut_ptr(), total);
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = lanes[GroupBlock::<ROWS>::lane(r)];
    }
}

/// `sum` plus one block's scaled products with each token of a group (and, for Q4_1, its
/// min term).
#[inline(always)]
unsafe fn group_block<F: Format, const ROWS: usize>(
    sum: __m256,
    block: &[u8],
    xb: &GroupBlock<ROWS>,
) -> __m256
where
    GroupBlock<ROWS>: GroupProducts,
{
    // SAFETY: a whole block; aligned fields in `xb`.
    unsafe {
        let (d, min) = F::scale_and_min(block);
        scaled::<F, ROWS>(sum, d, min, xb.products::<F>(block), xb)
    }
}

/// `sum` plus a block's integer products with a group's tokens, scaled: `fma(d · x_scale,
/// i, sum)`, then for Q4_1 `fma(min, x_sum, sum)`. Lanes no token uses have zero scales and
/// sums, so whatever integers `products` holds there add nothing.
#[inline(always)]
unsafe fn scaled<F: Format, const ROWS: usize>(
    sum: __m256,
    d: f32,
    min: f32,
    products: __m256i,
    xb: &GroupBlock<ROWS>,
) -> __m256 {
    // SAFETY: aligned fields in `xb`; AVX2 and FMA are enabled by the callers.
    unsafe {
        let totals = _mm256_cvtepi32_ps(products);
        let ds = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_load_ps(xb.scales.as_ptr()));
        let sum = _mm256_fmadd_ps(ds, totals, sum);
        if F::HAS_MIN {
            let sums = _mm256_load_ps(xb.sums.as_ptr());
            _mm256_fmadd_ps(_mm256_set1_ps(min), sums, sum)
        } else {
            sum
        }
    }
}

/// One weight row times two groups of eight tokens, each block unpacked once for both: the
/// same bits as `dot_group` on each group.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_group_pair<F: PairFormat>(
    w: &[u8],
    x: [&[Group8Block]; 2],
    out: [&mut [f32; 8]; 2],
) {
    let blocks = x[0].len().min(x[1].len()).min(w.len() / F::BYTES);
    let full = blocks - blocks % 8;
    let mut partials = [[_mm256_setzero_ps(); 8]; 2];
    let eights = x[0][..full]
        .chunks_exact(8)
        .zip(x[1][..full].chunks_exact(8));
    for (eight, (first, second)) in w[..full * F::BYTES].chunks_exact(8 * F::BYTES).zip(eights) {
        for j in 0..8 {
            let sums = [partials[0][j], partials[1][j]];
            // SAFETY: a whole block (`eight` holds eight).
            [partials[0][j], partials[1][j]] =
                unsafe { pair_block::<F>(sums, &eight[j * F::BYTES..], [&first[j], &second[j]]) };
        }
    }
    let mut last = [_mm256_setzero_ps(); 2];
    let rest = x[0][full..blocks].iter().zip(&x[1][full..blocks]);
    for (block, (first, second)) in w[full * F::BYTES..].chunks_exact(F::BYTES).zip(rest) {
        // SAFETY: a whole block.
        last = unsafe { pair_block::<F>(last, block, [first, second]) };
    }
    for ((partials, last), out) in partials.iter().zip(last).zip(out) {
        // SAFETY: AVX is enabled; eight f32 out.
        unsafe {
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                _mm256_add_ps(sum_partials(partials), last),
            )
        };
    }
}

/// `group_block` for two groups at once, the block unpacked once for both.
#[inline(always)]
unsafe fn pair_block<F: PairFormat>(
    sums: [__m256; 2],
    block: &[u8],
    groups: [&Group8Block; 2],
) -> [__m256; 2] {
    // SAFETY: a whole block; aligned fields in the groups.
    unsafe {
        let (d, min) = F::scale_and_min(block);
        let weights = F::unpack(block);
        let [first, second] = groups;
        [
            scaled::<F, 8>(
                sums[0],
                d,
                min,
                F::unpacked_products(&weights, first),
                first,
            ),
            scaled::<F, 8>(
                sums[1],
                d,
                min,
                F::unpacked_products(&weights, second),
                second,
            ),
        ]
    }
}

/// The group kernels' products for one layout.
pub(super) trait GroupProducts {
    /// The block's exact integer dot product with each token, in its lane. Lanes no token
    /// uses hold other integers.
    unsafe fn products<F: Format>(&self, block: &[u8]) -> __m256i;
}

impl GroupProducts for Group8Block {
    #[inline(always)]
    unsafe fn products<F: Format>(&self, block: &[u8]) -> __m256i {
        // SAFETY: the caller passes a whole block.
        unsafe { F::group_products(block, self) }
    }
}

impl GroupProducts for Group4Block {
    #[inline(always)]
    unsafe fn products<F: Format>(&self, block: &[u8]) -> __m256i {
        // SAFETY: the caller passes a whole block.
        unsafe { F::group4_products(block, self) }
    }
}

/// Lane j: the sum of `v[j]`'s eight lanes (exact: integers).
#[inline(always)]
unsafe fn lane_totals(v: &[__m256i; 8]) -> __m256i {
    // SAFETY: AVX2 is enabled by the callers.
    unsafe {
        // Pairs of vectors interleave and add, three times: each level halves the
        // partial sums per block and doubles the blocks per vector.
        let pair32 = |a: __m256i, b: __m256i| {
            _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
        };
        let pair64 = |a: __m256i, b: __m256i| {
            _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
        };
        // [b0 b1 b0 b1 | b0 b1 b0 b1] with two partials each, and so on.
        let (t01, t23) = (pair32(v[0], v[1]), pair32(v[2], v[3]));
        let (t45, t67) = (pair32(v[4], v[5]), pair32(v[6], v[7]));
        let (q0123, q4567) = (pair64(t01, t23), pair64(t45, t67));
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(q0123, q4567),
            _mm256_permute2x128_si256::<0x31>(q0123, q4567),
        )
    }
}

/// The sum of eight i32 lanes.
#[inline(always)]
unsafe fn lane_total(v: __m256i) -> i32 {
    // SAFETY: AVX2 is enabled by the callers.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
    }
}

/// The eight partial sums added in `horizontal_sum`'s order, lane by lane: a token's
/// result in a group of eight is bit for bit its result alone.
#[inline(always)]
unsafe fn sum_partials(acc: &[__m256; 8]) -> __m256 {
    // SAFETY: AVX is enabled by the callers.
    unsafe {
        let even = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let odd = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        _mm256_add_ps(even, odd)
    }
}

/// Lanes added as `kernels::sum_partials` adds its eight partial sums.
#[inline(always)]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled by the callers.
    unsafe {
        let low = _mm256_castps256_ps128(v);
        let high = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(low, high);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
        _mm_cvtss_f32(s)
    }
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

/// A Q5_0 block's 32 values as signed bytes in -16..=15: the low nibbles, with 0xF0
/// or'ed in where the fifth bit is clear (nibble - 16 in two's complement).
#[inline(always)]
unsafe fn q5_0_bytes(block: &[u8]) -> __m256i {
    // SAFETY: a whole block.
    unsafe {
        let (nibbles, bit_set) = q5_0_parts(block);
        _mm256_or_si256(
            nibbles,
            _mm256_andnot_si256(bit_set, _mm256_set1_epi8(0xF0_u8 as i8)),
        )
    }
}

/// A Q5_0 block's 32 values plus 16, as unsigned bytes in 0..=31.
#[inline(always)]
unsafe fn q5_0_unsigned_bytes(block: &[u8]) -> __m256i {
    // SAFETY: a whole block.
    unsafe {
        let (nibbles, bit_set) = q5_0_parts(block);
        _mm256_or_si256(nibbles, _mm256_and_si256(bit_set, _mm256_set1_epi8(0x10)))
    }
}

/// A Q5_0 block's low nibbles in byte order, and all ones in the bytes whose fifth bit is
/// set.
#[inline(always)]
unsafe fn q5_0_parts(block: &[u8]) -> (__m256i, __m256i) {
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
        let packed = _mm_loadu_si128(block[6..22].as_ptr().cast());
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        (_mm256_set_m128i(high, low), bit_set)
    }
}
