//! The arithmetic of one query row against its KV head's blocks, in one fixed order: the
//! query-key dots of a block, each head's softmax, and the probability-weighted sum of the
//! values. The caller widens each f16 block of the cache to f32 once for all its rows and
//! heads; all math is f32. With AVX2 (detected at run time) the value sum keeps its
//! accumulators in registers over a block's slots (a slice in memory cost a load and a
//! store per value and position); the portable twin gives the same bits (tested).

use crate::backend::cpu::exp;
use crate::model::kv_cache::BLOCK_SIZE;

/// Independent partial sums per query-key dot product: enough to keep the FMA units busy.
const PARTIALS: usize = 4;
/// Output dimensions one pass over the values accumulates (eight AVX2 registers).
const DIMS_PER_PASS: usize = 64;

/// `q` dotted with each of a block's keys, stored transposed (`[head_dim][BLOCK_SIZE]`):
/// dimension `i` goes to partial sum `i % PARTIALS`, and the partials are added pairwise.
/// (Compiled for AVX2 by the caller, its loops vectorize as they are; LLVM turned explicit
/// in-register broadcasts of `q` back into loads.)
#[inline(always)]
pub(super) fn block_dots(q: &[f32], keys: &[f32]) -> [f32; BLOCK_SIZE] {
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
                *acc = qi.mul_add(k, *acc);
            }
        }
    }
    // A head size that is not a multiple of PARTIALS: the rest into the first partial.
    for (&qi, row) in q[whole..]
        .iter()
        .zip(keys[whole * BLOCK_SIZE..].chunks_exact(BLOCK_SIZE))
    {
        for (acc, &k) in partials[0].iter_mut().zip(row) {
            *acc = qi.mul_add(k, *acc);
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

/// `out += Σ_slot probs[slot] · value_slot` over one block's first `probs.len()` slots in
/// order, one fused multiply-add per slot and dimension (`values`: `[BLOCK_SIZE][d]`, `d =
/// out.len()`). Block after block, this is a row's value sum in position order.
#[inline(always)]
pub(super) fn accumulate_block(probs: &[f32], values: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        // SAFETY: the features were just detected.
        unsafe { avx2::accumulate_block(probs, values, out) };
        return;
    }
    accumulate_block_portable(probs, values, out);
}

fn accumulate_block_portable(probs: &[f32], values: &[f32], out: &mut [f32]) {
    let d = out.len();
    for (&p, v) in probs.iter().zip(values.chunks_exact(d)) {
        for (o, &v) in out.iter_mut().zip(v) {
            *o = p.mul_add(v, *o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK_SIZE, DIMS_PER_PASS};

    /// `accumulate_block` for a head size that is a multiple of 8: up to 64 dimensions per
    /// pass over the block, their sums in registers from the first slot to the last.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate_block(probs: &[f32], values: &[f32], out: &mut [f32]) {
        let d = out.len();
        assert!(probs.len() <= BLOCK_SIZE && values.len() >= probs.len() * d);
        for (pass, out) in out.chunks_mut(DIMS_PER_PASS).enumerate() {
            let first = pass * DIMS_PER_PASS;
            // SAFETY (all arms): AVX2 and FMA, as this function.
            unsafe {
                match out.len() / 8 {
                    8 => dims::<8>(probs, values, d, first, out),
                    7 => dims::<7>(probs, values, d, first, out),
                    6 => dims::<6>(probs, values, d, first, out),
                    5 => dims::<5>(probs, values, d, first, out),
                    4 => dims::<4>(probs, values, d, first, out),
                    3 => dims::<3>(probs, values, d, first, out),
                    2 => dims::<2>(probs, values, d, first, out),
                    _ => dims::<1>(probs, values, d, first, out),
                }
            }
        }
    }

    /// Dimensions `first..first + 8 * V` of the block's sum into `out`.
    #[inline(always)]
    unsafe fn dims<const V: usize>(
        probs: &[f32],
        values: &[f32],
        d: usize,
        first: usize,
        out: &mut [f32],
    ) {
        let out = &mut out[..8 * V];
        // SAFETY: AVX2 and FMA are enabled by the caller; every load and store covers 8
        // floats inside `out` or `value`, slices of exactly 8 * V.
        unsafe {
            let mut acc: [__m256; V] =
                std::array::from_fn(|v| _mm256_loadu_ps(out.as_ptr().add(8 * v)));
            for (slot, &p) in probs.iter().enumerate() {
                let at = slot * d + first;
                let value = &values[at..at + 8 * V];
                let p = _mm256_set1_ps(p);
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(p, _mm256_loadu_ps(value.as_ptr().add(8 * v)), *acc);
                }
            }
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

    #[test]
    fn accumulate_block_matches_its_portable_twin_bit_for_bit() {
        for d in [8, 24, 64, 72, 128] {
            for slots in [1, 7, 16] {
                let block = values(BLOCK_SIZE * d, d as u32);
                let probs = values(slots, 99);
                let start = values(d, 5);
                let (mut fast, mut portable) = (start.clone(), start);
                accumulate_block(&probs, &block, &mut fast);
                accumulate_block_portable(&probs, &block, &mut portable);
                assert_eq!(
                    fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "d {d}, {slots} slots"
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
