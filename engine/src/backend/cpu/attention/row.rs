//! The arithmetic of one query row against its KV head's blocks, in one fixed order: the
//! query-key dots of a block, each head's softmax, and the probability-weighted sum of the
//! values. Keys and values come as the cache stores them (f16) and are widened exactly;
//! all math is f32. With AVX2 (`Kernels`, chosen once per call) keys and values are widened eight
//! at a time with F16C and the weighted sum keeps its accumulators in registers (a slice in
//! memory cost a load and a store per value and position); the portable twins give the
//! same bits (tested).

use half::f16;

use crate::backend::cpu::exp;
use crate::model::kv_cache::BLOCK_SIZE;

/// Independent partial sums per query-key dot product: enough to keep the FMA units busy.
const PARTIALS: usize = 4;
/// Output dimensions one pass over the values accumulates (eight AVX2 registers).
const DIMS_PER_PASS: usize = 64;

/// The row kernels for this CPU and head size, chosen once per attention call.
#[derive(Clone, Copy)]
pub(super) struct Kernels {
    /// `q` dotted with each of a block's keys, stored transposed (`[head_dim][BLOCK_SIZE]`):
    /// dimension `i` goes to partial sum `i % PARTIALS`, and the partials are added
    /// pairwise.
    pub(super) block_dots: fn(&[f32], &[f16]) -> [f32; BLOCK_SIZE],
    /// `out = Σ_j probs[j] · value_j` over positions in order, one fused multiply-add per
    /// position and dimension. The blocks hold the values, `[BLOCK_SIZE][d]` each,
    /// position `j` at slot `j % BLOCK_SIZE` of block `j / BLOCK_SIZE`.
    pub(super) weighted_sum: fn(&[f32], &[&[f16]], &mut [f32]),
}

impl Kernels {
    pub(super) fn new(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY (both kernels): the features were just detected.
            return Self {
                block_dots: |q, keys| unsafe { avx2::block_dots(q, keys) },
                weighted_sum: if head_dim.is_multiple_of(8) {
                    |probs, blocks, out| unsafe { avx2::weighted_sum(probs, blocks, out) }
                } else {
                    weighted_sum_portable
                },
            };
        }
        Self {
            block_dots: block_dots_portable,
            weighted_sum: weighted_sum_portable,
        }
    }
}

fn block_dots_portable(q: &[f32], keys: &[f16]) -> [f32; BLOCK_SIZE] {
    let mut partials = [[0f32; BLOCK_SIZE]; PARTIALS];
    let whole = q.len() / PARTIALS * PARTIALS;
    for (qs, rows) in q
        .chunks_exact(PARTIALS)
        .zip(keys.chunks_exact(PARTIALS * BLOCK_SIZE))
    {
        for ((partial, &qi), row) in partials
            .iter_mut()
            .zip(qs)
            .zip(rows.chunks_exact(BLOCK_SIZE))
        {
            for (acc, &k) in partial.iter_mut().zip(row) {
                *acc = qi.mul_add(k.to_f32(), *acc);
            }
        }
    }
    // A head size that is not a multiple of PARTIALS: the rest into the first partial.
    for (&qi, row) in q[whole..]
        .iter()
        .zip(keys[whole * BLOCK_SIZE..].chunks_exact(BLOCK_SIZE))
    {
        for (acc, &k) in partials[0].iter_mut().zip(row) {
            *acc = qi.mul_add(k.to_f32(), *acc);
        }
    }
    let [a, b, c, e] = partials;
    std::array::from_fn(|s| (a[s] + b[s]) + (c[s] + e[s]))
}

/// In place, for each head's scores (`heads` rows `positions` apart, the first `count` of
/// each in use): the maximum, the exponentials of the differences, their sum in position
/// order, then each divided by it. The heads' sums run side by side: each is its own
/// sequential chain, so interleaving them changes no bit and hides the adds' latency.
#[inline(always)]
pub(super) fn softmax_heads(scores: &mut [f32], positions: usize, count: usize) {
    for head in scores.chunks_exact_mut(positions) {
        let head = &mut head[..count];
        let max = head.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        exp::exp_shifted_in_place(head, max);
    }
    let heads = scores.len() / positions;
    let mut first = 0;
    while first < heads {
        let sums = &mut [0f32; 4][..(heads - first).min(4)];
        match sums.len() {
            4 => sums.copy_from_slice(&head_sums::<4>(scores, positions, count, first)),
            3 => sums.copy_from_slice(&head_sums::<3>(scores, positions, count, first)),
            2 => sums.copy_from_slice(&head_sums::<2>(scores, positions, count, first)),
            _ => sums.copy_from_slice(&head_sums::<1>(scores, positions, count, first)),
        }
        for (h, &sum) in sums.iter().enumerate() {
            let at = (first + h) * positions;
            for s in &mut scores[at..at + count] {
                *s /= sum;
            }
        }
        first += sums.len();
    }
}

/// The sums of heads `first..first + N`'s first `count` scores, each in position order.
#[inline(always)]
fn head_sums<const N: usize>(
    scores: &[f32],
    positions: usize,
    count: usize,
    first: usize,
) -> [f32; N] {
    let rows: [&[f32]; N] = std::array::from_fn(|h| {
        let at = (first + h) * positions;
        &scores[at..at + count]
    });
    let mut sums = [0f32; N];
    for j in 0..count {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            *sum += row[j];
        }
    }
    sums
}

fn weighted_sum_portable(probs: &[f32], blocks: &[&[f16]], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (values, probs) in blocks.iter().zip(probs.chunks(BLOCK_SIZE)) {
        for (&p, v) in probs.iter().zip(values.chunks_exact(d)) {
            for (o, &v) in out.iter_mut().zip(v) {
                *o = p.mul_add(v.to_f32(), *o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BLOCK_SIZE, DIMS_PER_PASS, PARTIALS};

    // A block's slots are two vectors of eight.
    const _: () = assert!(BLOCK_SIZE == 16);

    /// Eight f16 at `at`, widened (exactly) to f32.
    #[inline(always)]
    unsafe fn widen8(at: *const f16) -> __m256 {
        // SAFETY: the caller vouches for 8 values at `at`; F16C is enabled by the callers.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(at.cast())) }
    }

    /// `block_dots` with the keys widened eight at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block_dots(q: &[f32], keys: &[f16]) -> [f32; BLOCK_SIZE] {
        assert!(keys.len() >= q.len() * BLOCK_SIZE);
        // SAFETY: the features are enabled; every widening reads 8 values of a
        // `BLOCK_SIZE`-value row of `keys`, which holds `q.len()` rows (checked above).
        unsafe {
            let mut partials = [[_mm256_setzero_ps(); 2]; PARTIALS];
            let whole = q.len() / PARTIALS * PARTIALS;
            for (qs, rows) in q[..whole]
                .chunks_exact(PARTIALS)
                .zip(keys.chunks_exact(PARTIALS * BLOCK_SIZE))
            {
                for (p, (partial, &qi)) in partials.iter_mut().zip(qs).enumerate() {
                    let row = rows.as_ptr().add(p * BLOCK_SIZE);
                    let qi = _mm256_set1_ps(qi);
                    partial[0] = _mm256_fmadd_ps(qi, widen8(row), partial[0]);
                    partial[1] = _mm256_fmadd_ps(qi, widen8(row.add(8)), partial[1]);
                }
            }
            for (&qi, row) in q[whole..]
                .iter()
                .zip(keys[whole * BLOCK_SIZE..].chunks_exact(BLOCK_SIZE))
            {
                let qi = _mm256_set1_ps(qi);
                partials[0][0] = _mm256_fmadd_ps(qi, widen8(row.as_ptr()), partials[0][0]);
                partials[0][1] = _mm256_fmadd_ps(qi, widen8(row.as_ptr().add(8)), partials[0][1]);
            }
            let [a, b, c, e] = partials;
            let mut dots = [0f32; BLOCK_SIZE];
            for (half, out) in dots.chunks_exact_mut(8).enumerate() {
                let sum = _mm256_add_ps(
                    _mm256_add_ps(a[half], b[half]),
                    _mm256_add_ps(c[half], e[half]),
                );
                _mm256_storeu_ps(out.as_mut_ptr(), sum);
            }
            dots
        }
    }

    /// `weighted_sum` for a head size that is a multiple of 8: up to 64 dimensions per
    /// pass over the values, their sums in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum(probs: &[f32], blocks: &[&[f16]], out: &mut [f32]) {
        let d = out.len();
        for (pass, out) in out.chunks_mut(DIMS_PER_PASS).enumerate() {
            let first = pass * DIMS_PER_PASS;
            // SAFETY (all arms): AVX2 and FMA, as this function.
            unsafe {
                match out.len() / 8 {
                    8 => dims::<8>(probs, blocks, d, first, out),
                    7 => dims::<7>(probs, blocks, d, first, out),
                    6 => dims::<6>(probs, blocks, d, first, out),
                    5 => dims::<5>(probs, blocks, d, first, out),
                    4 => dims::<4>(probs, blocks, d, first, out),
                    3 => dims::<3>(probs, blocks, d, first, out),
                    2 => dims::<2>(probs, blocks, d, first, out),
                    _ => dims::<1>(probs, blocks, d, first, out),
                }
            }
        }
    }

    /// Dimensions `first..first + 8 * V` of the weighted sum into `out`.
    #[inline(always)]
    unsafe fn dims<const V: usize>(
        probs: &[f32],
        blocks: &[&[f16]],
        d: usize,
        first: usize,
        out: &mut [f32],
    ) {
        // SAFETY: AVX2 and FMA are enabled by the caller; every load reads 8 floats inside
        // `value`, a slice of exactly 8 * V.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); V];
            for (values, probs) in blocks.iter().zip(probs.chunks(BLOCK_SIZE)) {
                for (slot, &p) in probs.iter().enumerate() {
                    let at = slot * d + first;
                    let value = &values[at..at + 8 * V];
                    let p = _mm256_set1_ps(p);
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(p, widen8(value.as_ptr().add(8 * v)), *acc);
                    }
                }
            }
            let out = &mut out[..8 * V];
            for (v, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5
            })
            .collect()
    }

    fn halves(count: usize, seed: u32) -> Vec<f16> {
        values(count, seed).into_iter().map(f16::from_f32).collect()
    }

    #[test]
    fn block_dots_match_their_portable_twin_bit_for_bit() {
        for d in [1, 3, 4, 20, 64, 66, 128] {
            let q = values(d, 7);
            let keys = halves(d * BLOCK_SIZE, 8);
            let fast = (Kernels::new(d).block_dots)(&q, &keys);
            let portable = block_dots_portable(&q, &keys);
            assert_eq!(fast.map(f32::to_bits), portable.map(f32::to_bits), "d {d}");
        }
    }

    #[test]
    fn weighted_sum_matches_its_portable_twin_bit_for_bit() {
        for d in [8, 24, 64, 72, 128] {
            for count in [1usize, 15, 16, 17, 50] {
                let n_blocks = count.div_ceil(BLOCK_SIZE);
                let storage: Vec<Vec<f16>> = (0..n_blocks)
                    .map(|b| halves(BLOCK_SIZE * d, b as u32))
                    .collect();
                let blocks: Vec<&[f16]> = storage.iter().map(Vec::as_slice).collect();
                let probs = values(count, 99);
                let mut fast = vec![f32::NAN; d];
                let mut portable = vec![f32::NAN; d];
                (Kernels::new(d).weighted_sum)(&probs, &blocks, &mut fast);
                weighted_sum_portable(&probs, &blocks, &mut portable);
                assert_eq!(
                    fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "d {d}, {count} positions"
                );
            }
        }
    }

    #[test]
    fn softmax_heads_matches_one_head_at_a_time_summed_in_order() {
        let (positions, count) = (40, 33);
        for heads in 1..=9 {
            let mut together = values(heads * positions, heads as u32);
            let mut alone = together.clone();
            softmax_heads(&mut together, positions, count);
            for head in alone.chunks_exact_mut(positions) {
                let head = &mut head[..count];
                let max = head.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                exp::exp_shifted_in_place(head, max);
                let sum: f32 = head.iter().sum();
                for s in head.iter_mut() {
                    *s /= sum;
                }
            }
            assert_eq!(
                together.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                alone.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{heads} heads"
            );
        }
    }
}
