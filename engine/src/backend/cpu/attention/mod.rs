//! Causal attention over the paged KV cache, reading each sequence's blocks in place: no
//! gathered copy of its context per layer and step.
//!
//! Every query row is computed on its own, over its keys in position order, with one fixed
//! summation order. So a position's output does not depend on how its sequence was
//! chunked or batched: a prompt prefilled in one piece, in chunks, or after a cached
//! prefix, and a decode step, give the same bits.
//!
//! The work is split over (sequence, KV head, rows) tasks on the rayon pool. Grouped-query
//! heads that share a KV head run in the same task.

use rayon::prelude::*;

mod row;

use crate::model::kv_cache::{BLOCK_SIZE, BlockTable, KvPool};

/// Rows of one sequence per task: a decode step is one row; a prefill chunk is split.
const ROWS_PER_TASK: usize = 16;

/// The batch's rotated queries, `[n, heads, head_dim]`.
pub(crate) struct Queries<'a> {
    pub values: &'a [f32],
    pub n: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One sequence's share of the batch: rows `offset..offset + len`, at positions
/// `start..start + len`, whose keys and values are already in `table`'s blocks.
pub(crate) struct SequenceRows<'a> {
    pub table: &'a BlockTable,
    pub offset: usize,
    pub start: usize,
    pub len: usize,
}

/// Attention of every row over its sequence's positions up to its own, `[n, heads *
/// head_dim]` in batch order.
pub(crate) fn attend(
    pool: &KvPool,
    layer: usize,
    queries: &Queries<'_>,
    sequences: &[SequenceRows<'_>],
) -> Vec<f32> {
    let (heads, d) = (queries.heads, queries.head_dim);
    let group = heads / queries.kv_heads;
    let kernels = row::Kernels::new(d);
    let tasks: Vec<Task> = sequences
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            (0..queries.kv_heads).flat_map(move |kv_head| {
                (0..seq.len).step_by(ROWS_PER_TASK).map(move |first| Task {
                    sequence: s,
                    kv_head,
                    rows: first..(first + ROWS_PER_TASK).min(seq.len),
                })
            })
        })
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|task| {
            run(&Job {
                kernels,
                pool,
                layer,
                queries,
                seq: &sequences[task.sequence],
                task,
            })
        })
        .collect();
    // Each task's `[rows, group, d]` into its rows' heads of `[n, heads * d]`.
    let mut out = vec![0f32; queries.n * heads * d];
    for (task, result) in tasks.iter().zip(results) {
        let seq = &sequences[task.sequence];
        for (row, values) in task.rows.clone().zip(result.chunks_exact(group * d)) {
            let at = (seq.offset + row) * heads * d + task.kv_head * group * d;
            out[at..at + group * d].copy_from_slice(values);
        }
    }
    out
}

struct Task {
    sequence: usize,
    kv_head: usize,
    rows: std::ops::Range<usize>,
}

/// One task with what it reads.
struct Job<'a> {
    kernels: row::Kernels,
    pool: &'a KvPool,
    layer: usize,
    queries: &'a Queries<'a>,
    seq: &'a SequenceRows<'a>,
    task: &'a Task,
}

fn run(job: &Job<'_>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { run_avx2(job) };
    }
    run_inline(job)
}

/// The same code compiled for AVX2 and FMA, so that its loops over slots and dimensions
/// vectorize. `mul_add` is a fused multiply-add on every target: the results are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(job: &Job<'_>) -> Vec<f32> {
    run_inline(job)
}

#[inline(always)]
fn run_inline(job: &Job<'_>) -> Vec<f32> {
    let Job {
        kernels,
        pool,
        layer,
        queries,
        seq,
        task,
    } = *job;
    let d = queries.head_dim;
    let group = queries.heads / queries.kv_heads;
    // As candle's `(q · kᵀ) * scale`: the scale in f32, applied after the dot product.
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    // Row r sees positions 0..=start + row, `counts[r]` of them; per row, each head's
    // scores, `positions` apart.
    let counts: Vec<usize> = task.rows.clone().map(|row| seq.start + row + 1).collect();
    let positions = seq.start + task.rows.end;
    let blocks = &seq.table.blocks[..positions.div_ceil(BLOCK_SIZE)];
    let mut scores = vec![0f32; counts.len() * group * positions];
    // Block by block, each block's keys serve every row and head of the task while in
    // cache.
    for (b, &block) in blocks.iter().enumerate() {
        let first = b * BLOCK_SIZE;
        let keys = pool.block_keys(layer, block, task.kv_head);
        for ((row, &count), row_scores) in task
            .rows
            .clone()
            .zip(&counts)
            .zip(scores.chunks_exact_mut(group * positions))
            .filter(|((_, count), _)| **count > first)
        {
            let slots = BLOCK_SIZE.min(count - first);
            for (g, head_scores) in row_scores.chunks_exact_mut(positions).enumerate() {
                let at = ((seq.offset + row) * queries.heads + task.kv_head * group + g) * d;
                let dots = (kernels.block_dots)(&queries.values[at..at + d], keys);
                for (score, dot) in head_scores[first..first + slots].iter_mut().zip(dots) {
                    *score = dot * scale;
                }
            }
        }
    }
    let values: Vec<&[half::f16]> = blocks
        .iter()
        .map(|&block| pool.block_values(layer, block, task.kv_head))
        .collect();
    let mut out = vec![0f32; counts.len() * group * d];
    for ((row_scores, &count), row_out) in scores
        .chunks_exact_mut(group * positions)
        .zip(&counts)
        .zip(out.chunks_exact_mut(group * d))
    {
        row::softmax_heads(row_scores, positions, count);
        for (probs, head_out) in row_scores
            .chunks_exact(positions)
            .zip(row_out.chunks_exact_mut(d))
        {
            (kernels.weighted_sum)(&probs[..count], &values, head_out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{LlamaConfig, RopeStyle};

    fn config(heads: usize, kv_heads: usize, head_dim: usize) -> LlamaConfig {
        LlamaConfig {
            architecture: "llama".into(),
            n_layers: 1,
            hidden_size: heads * head_dim,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim,
            ffn_size: 1,
            vocab_size: 1,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_style: RopeStyle::Halves,
            rope_llama3: None,
            context_length: 4096,
        }
    }

    /// Pseudo-random values in -1..1.
    fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..count)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_softmax_attention_in_f64() {
        // Two sequences in one batch: 37 cached positions plus 5 new rows, and 20 new rows;
        // 6 query heads over 2 KV heads, head size 20 (not a multiple of 8).
        let (heads, kv_heads, d) = (6, 2, 20);
        let cfg = config(heads, kv_heads, d);
        let mut pool = KvPool::new(&cfg, 8);
        let first = BlockTable::with_blocks(vec![5, 1, 7]);
        let second = BlockTable::with_blocks(vec![0, 3]);
        let (cached, new_first, new_second) = (37, 5, 20);
        // Per sequence, keys and values for all its positions, `[len, kv_heads, d]`.
        let keys_1 = values(kv_heads * (cached + new_first) * d, 1);
        let values_1 = values(kv_heads * (cached + new_first) * d, 2);
        let keys_2 = values(kv_heads * new_second * d, 3);
        let values_2 = values(kv_heads * new_second * d, 4);
        pool.write(0, &first, 0, &keys_1, &values_1);
        pool.write(0, &second, 0, &keys_2, &values_2);
        let n = new_first + new_second;
        let queries = values(heads * n * d, 5);
        let q = Queries {
            values: &queries,
            n,
            heads,
            kv_heads,
            head_dim: d,
        };
        let sequences = [
            SequenceRows {
                table: &first,
                offset: 0,
                start: cached,
                len: new_first,
            },
            SequenceRows {
                table: &second,
                offset: new_first,
                start: 0,
                len: new_second,
            },
        ];
        let out = attend(&pool, 0, &q, &sequences);
        // The cache holds f16: the reference reads what it holds.
        let stored = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let (keys_1, values_1) = (stored(&keys_1), stored(&values_1));
        let (keys_2, values_2) = (stored(&keys_2), stored(&values_2));
        let group = heads / kv_heads;
        for (seq, keys, vals) in [
            (&sequences[0], &keys_1, &values_1),
            (&sequences[1], &keys_2, &values_2),
        ] {
            for row in 0..seq.len {
                let count = seq.start + row + 1;
                for head in 0..heads {
                    let h = head / group;
                    let qv = &queries[((seq.offset + row) * heads + head) * d..][..d];
                    let scores: Vec<f64> = (0..count)
                        .map(|j| {
                            let k = &keys[(j * kv_heads + h) * d..][..d];
                            let dot: f64 =
                                qv.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                            dot / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for i in 0..d {
                        let expected: f64 = (0..count)
                            .map(|j| weights[j] / total * vals[(j * kv_heads + h) * d + i] as f64)
                            .sum();
                        let got = out[(seq.offset + row) * heads * d + head * d + i] as f64;
                        assert!(
                            (got - expected).abs() < 1e-5,
                            "row {row} head {head} dim {i}: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}
