//! The CUDA kernels and cuBLAS products against plain CPU references, on a real GPU.
//! Gated: they run when `AGENTBOX_GPU_TESTS=1` (set by `scripts/gpu_tests.sh` on a GPU
//! machine) and then must pass; elsewhere they return at once. Shapes are those of the
//! SmolLM2-135M, 1B-class and Llama-3-8B models.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use engine::backend::cuda::{AttentionShape, CudaBackend, CudaError, CudaSlice, sampling};
use engine::sampling::{DeviceSampling, SamplingParams};
use half::bf16;

fn backend() -> Option<CudaBackend> {
    if std::env::var("AGENTBOX_GPU_TESTS").as_deref() != Ok("1") {
        eprintln!("AGENTBOX_GPU_TESTS is not 1: skipping the GPU checks");
        return None;
    }
    Some(CudaBackend::open(0).unwrap_or_else(|e| panic!("opening GPU 0: {e}")))
}

/// Deterministic values in [-1, 1) (xorshift), rounded to bf16.
fn random(n: usize, seed: u64) -> Vec<bf16> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

fn up<T: cudarc::driver::DeviceRepr>(gpu: &CudaBackend, data: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(data).unwrap()
}

fn down<T: cudarc::driver::DeviceRepr + Default + Clone>(
    gpu: &CudaBackend,
    data: &CudaSlice<T>,
) -> Vec<T> {
    gpu.stream.clone_dtoh(data).unwrap()
}

fn f(v: bf16) -> f32 {
    v.to_f32()
}

fn round(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// Elements within one bf16 rounding step of the reference (different summation orders
/// may land on either side of a rounding boundary), and nearly all exactly equal.
fn assert_bf16_close(got: &[bf16], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f(g);
        if g == w {
            exact += 1;
            continue;
        }
        let step = w.abs().max(1e-3) / 64.0;
        assert!((g - w).abs() <= step, "{what}[{i}]: {g} vs {w}");
    }
    assert!(
        exact * 100 >= got.len() * 95,
        "{what}: only {exact}/{} exact",
        got.len()
    );
}

fn rms_reference(x: &[f32], weight: &[bf16], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let mean = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
            let scale = (1.0 / (mean + eps as f64).sqrt()) as f32;
            row.iter()
                .zip(weight)
                .map(move |(v, w)| round(round(v * scale) * f(*w)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm_and_the_fused_residual_add_match_the_reference() {
    let Some(gpu) = backend() else { return };
    for (rows, dim) in [(3, 576), (7, 2048), (2, 4096)] {
        let x = random(rows * dim, 1);
        let residual = random(rows * dim, 2);
        let weight = random(dim, 3);
        let eps = 1e-5;
        let (dx, dw) = (up(&gpu, &x), up(&gpu, &weight));
        let mut out = gpu.stream.alloc_zeros::<bf16>(rows * dim).unwrap();
        gpu.kernels.rms_norm(&dx, &dw, &mut out, dim, eps).unwrap();
        let xf: Vec<f32> = x.iter().map(|v| f(*v)).collect();
        assert_bf16_close(
            &down(&gpu, &out),
            &rms_reference(&xf, &weight, eps),
            "rms_norm",
        );

        let mut dres = up(&gpu, &residual);
        gpu.kernels
            .add_rms_norm(&mut dres, &dx, &dw, &mut out, dim, eps)
            .unwrap();
        let summed: Vec<f32> = residual
            .iter()
            .zip(&x)
            .map(|(r, v)| round(f(*r) + f(*v)))
            .collect();
        let got_res: Vec<f32> = down(&gpu, &dres).iter().map(|v| f(*v)).collect();
        assert_eq!(got_res, summed, "the residual sum is exact");
        assert_bf16_close(
            &down(&gpu, &out),
            &rms_reference(&summed, &weight, eps),
            "add_rms_norm",
        );
    }
}

#[test]
fn embedding_gather_add_and_silu_mul_match_the_reference() {
    let Some(gpu) = backend() else { return };
    let (vocab, dim) = (1000, 2048);
    let table = random(vocab * dim, 4);
    let ids: Vec<u32> = vec![0, 999, 17, 17, 512];
    let mut out = gpu.stream.alloc_zeros::<bf16>(ids.len() * dim).unwrap();
    gpu.kernels
        .embedding_gather(&up(&gpu, &table), &up(&gpu, &ids), &mut out, dim)
        .unwrap();
    let want: Vec<bf16> = ids
        .iter()
        .flat_map(|&id| table[id as usize * dim..(id as usize + 1) * dim].to_vec())
        .collect();
    assert_eq!(down(&gpu, &out), want);

    let (a, b) = (random(4096, 5), random(4096, 6));
    let mut da = up(&gpu, &a);
    gpu.kernels.add_in_place(&mut da, &up(&gpu, &b)).unwrap();
    let sum: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| round(f(*x) + f(*y)))
        .collect();
    assert_eq!(
        down(&gpu, &da).iter().map(|v| f(*v)).collect::<Vec<_>>(),
        sum
    );

    let (rows, inter) = (5, 8192);
    let gate_up = random(rows * 2 * inter, 7);
    let mut out = gpu.stream.alloc_zeros::<bf16>(rows * inter).unwrap();
    gpu.kernels
        .silu_mul(&up(&gpu, &gate_up), &mut out, rows, inter)
        .unwrap();
    let want: Vec<f32> = (0..rows * inter)
        .map(|i| {
            let (r, j) = (i / inter, i % inter);
            let g = f(gate_up[r * 2 * inter + j]);
            let u = f(gate_up[r * 2 * inter + inter + j]);
            round(round(g / (1.0 + (-g).exp())) * u)
        })
        .collect();
    assert_bf16_close(&down(&gpu, &out), &want, "silu_mul");
}

#[test]
fn rope_rotates_half_pairs_at_each_position() {
    let Some(gpu) = backend() else { return };
    let (n_heads, n_kv_heads, head_dim) = (32, 8, 128);
    let positions: Vec<i32> = vec![0, 1, 7, 100, 4095, 8191];
    let tokens = positions.len();
    let q = random(tokens * n_heads * head_dim, 8);
    let k = random(tokens * n_kv_heads * head_dim, 9);
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / 500_000f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let (mut dq, mut dk) = (up(&gpu, &q), up(&gpu, &k));
    gpu.kernels
        .rope(
            &mut dq,
            &mut dk,
            &up(&gpu, &positions),
            &up(&gpu, &inv_freq),
            n_heads,
            n_kv_heads,
            head_dim,
        )
        .unwrap();
    let reference = |x: &[bf16], heads: usize| -> Vec<f32> {
        let half = head_dim / 2;
        let mut out = vec![0f32; x.len()];
        for (t, &position) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * head_dim;
                for i in 0..half {
                    let angle = position as f32 * inv_freq[i];
                    let (s, c) = (round(angle.sin()), round(angle.cos()));
                    let (x0, x1) = (f(x[base + i]), f(x[base + i + half]));
                    out[base + i] = round(round(x0 * c) - round(x1 * s));
                    out[base + i + half] = round(round(x1 * c) + round(x0 * s));
                }
            }
        }
        out
    };
    assert_bf16_close(&down(&gpu, &dq), &reference(&q, n_heads), "rope q");
    assert_bf16_close(&down(&gpu, &dk), &reference(&k, n_kv_heads), "rope k");
}

/// Attention of one query over `len` cached tokens, in f64 from the bf16 values.
fn attention_reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let logits: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..q.len())
        .map(|d| {
            (weights
                .iter()
                .zip(values)
                .map(|(w, v)| w * v[d] as f64)
                .sum::<f64>()
                / total) as f32
        })
        .collect()
}

#[test]
fn paged_decode_attention_reads_scattered_blocks_with_gqa() {
    let Some(gpu) = backend() else { return };
    for (n_heads, n_kv_heads, head_dim) in [(9, 3, 64), (32, 8, 128)] {
        let context_lens: Vec<i32> = vec![1, 17, 300, 1000];
        let block = 16;
        let max_blocks = 1000usize.div_ceil(block);
        let n_blocks = context_lens.len() * max_blocks + 5;
        // Each sequence gets blocks scattered over the pool, in reverse, interleaved.
        let mut tables = vec![0u32; context_lens.len() * max_blocks];
        for (s, row) in tables.chunks_mut(max_blocks).enumerate() {
            for (b, slot) in row.iter_mut().enumerate() {
                *slot = (n_blocks - 1 - (b * context_lens.len() + s)) as u32;
            }
        }
        let per_token = n_kv_heads * head_dim;
        let cache_len = n_blocks * block * per_token;
        let mut k_cache = gpu.stream.alloc_zeros::<bf16>(cache_len).unwrap();
        let mut v_cache = gpu.stream.alloc_zeros::<bf16>(cache_len).unwrap();
        // Write every sequence's tokens through the cache-write kernel.
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (s, &len) in context_lens.iter().enumerate() {
            let len = len as usize;
            let k = random(len * per_token, 100 + s as u64);
            let v = random(len * per_token, 200 + s as u64);
            let slots: Vec<u32> = (0..len)
                .map(|t| tables[s * max_blocks + t / block] * block as u32 + (t % block) as u32)
                .collect();
            gpu.kernels
                .kv_cache_write(
                    &up(&gpu, &k),
                    &up(&gpu, &v),
                    &mut k_cache,
                    &mut v_cache,
                    &up(&gpu, &slots),
                    n_kv_heads,
                    head_dim,
                )
                .unwrap();
            keys.push(k);
            values.push(v);
        }
        let q = random(context_lens.len() * n_heads * head_dim, 300);
        let mut out = gpu.stream.alloc_zeros::<bf16>(q.len()).unwrap();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            max_blocks,
        };
        let rows: Vec<u32> = (0..context_lens.len() as u32).collect();
        gpu.kernels
            .paged_attention(
                &up(&gpu, &q),
                &k_cache,
                &v_cache,
                &up(&gpu, &tables),
                &up(&gpu, &rows),
                &up(&gpu, &context_lens),
                &mut out,
                shape,
                scale,
            )
            .unwrap();
        let got = down(&gpu, &out);
        let group = n_heads / n_kv_heads;
        for (s, &len) in context_lens.iter().enumerate() {
            for h in 0..n_heads {
                let kvh = h / group;
                let pick = |data: &[bf16]| -> Vec<Vec<f32>> {
                    (0..len as usize)
                        .map(|t| {
                            data[t * per_token + kvh * head_dim
                                ..t * per_token + (kvh + 1) * head_dim]
                                .iter()
                                .map(|v| f(*v))
                                .collect()
                        })
                        .collect()
                };
                let base = (s * n_heads + h) * head_dim;
                let qh: Vec<f32> = q[base..base + head_dim].iter().map(|v| f(*v)).collect();
                let want = attention_reference(&qh, &pick(&keys[s]), &pick(&values[s]), scale);
                for d in 0..head_dim {
                    let g = f(got[base + d]);
                    assert!(
                        (g - want[d]).abs() <= 2e-3 + want[d].abs() / 128.0,
                        "seq {s} (len {len}) head {h} dim {d}: {g} vs {}",
                        want[d]
                    );
                }
            }
        }
    }
}

#[test]
fn cublas_products_match_the_reference_in_the_weight_layout() {
    let Some(gpu) = backend() else { return };
    for (m, n, k) in [(1, 576, 576), (5, 3072, 2048), (64, 1024, 4096)] {
        let x = random(m * k, 10);
        let w = random(n * k, 11);
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..k)
                    .map(|j| f(x[r * k + j]) as f64 * f(w[c * k + j]) as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let (dx, dw) = (up(&gpu, &x), up(&gpu, &w));
        let mut y = gpu.stream.alloc_zeros::<bf16>(m * n).unwrap();
        gpu.gemm.matmul_bf16(&dx, &dw, &mut y, m, n, k).unwrap();
        for (i, (g, w)) in down(&gpu, &y).iter().zip(&want).enumerate() {
            assert!(
                (f(*g) - w).abs() <= 1e-3 * (k as f32).sqrt() + w.abs() / 128.0,
                "bf16 [{i}]: {g} vs {w}"
            );
        }
        let mut y32 = gpu.stream.alloc_zeros::<f32>(m * n).unwrap();
        gpu.gemm
            .matmul_f32_out(&dx, &dw, &mut y32, m, n, k)
            .unwrap();
        for (i, (g, w)) in down(&gpu, &y32).iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-3 * (k as f32).sqrt(),
                "f32 [{i}]: {g} vs {w}"
            );
        }
    }
}

#[test]
fn argmax_picks_the_largest_and_the_lowest_index_on_ties() {
    let Some(gpu) = backend() else { return };
    let vocab = 128_256;
    let mut logits: Vec<f32> = random(3 * vocab, 12).iter().map(|v| f(*v)).collect();
    logits[77_777] = 5.0;
    logits[vocab + 3] = 7.0;
    logits[vocab + 90_000] = 7.0;
    logits[2 * vocab + vocab - 1] = 9.0;
    let mut out = gpu.stream.alloc_zeros::<u32>(3).unwrap();
    gpu.kernels
        .argmax(&up(&gpu, &logits), &mut out, vocab)
        .unwrap();
    assert_eq!(down(&gpu, &out), vec![77_777, 3, vocab as u32 - 1]);
}

#[test]
fn wrong_shapes_are_errors_not_launches() {
    let Some(gpu) = backend() else { return };
    let x = up(&gpu, &random(100, 13));
    let w = up(&gpu, &random(10, 14));
    let mut out = gpu.stream.alloc_zeros::<bf16>(90).unwrap();
    let error = gpu
        .kernels
        .rms_norm(&x, &w, &mut out, 10, 1e-5)
        .unwrap_err();
    assert!(matches!(error, CudaError::BadShape(_)), "{error}");
    let mut y = gpu.stream.alloc_zeros::<bf16>(10).unwrap();
    let error = gpu.gemm.matmul_bf16(&x, &w, &mut y, 10, 1, 11).unwrap_err();
    assert!(matches!(error, CudaError::BadShape(_)), "{error}");
}

/// The tokens the CPU sampler may draw from.
fn kept_by_the_cpu_sampler(logits: &[f32], p: &DeviceSampling) -> Vec<u32> {
    let params = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        ..SamplingParams::default()
    };
    params
        .candidates(logits)
        .into_iter()
        .map(|(token, _)| token)
        .collect()
}

/// Temperature 1, nothing filtered out.
const UNFILTERED: DeviceSampling = DeviceSampling {
    temperature: 1.0,
    top_k: 0,
    top_p: 1.0,
    min_p: 0.0,
    seed: 0,
    step: 0,
};

/// `draws` copies of `setting`, one per seed from `first_seed`.
fn seeded(setting: DeviceSampling, first_seed: u64, draws: usize) -> Vec<DeviceSampling> {
    (0..draws as u64)
        .map(|i| DeviceSampling {
            seed: first_seed + i,
            ..setting
        })
        .collect()
}

/// One draw per entry of `rows`, each from the same `logits` row.
fn sample_on_gpu(gpu: &CudaBackend, logits: &[f32], rows: &[DeviceSampling]) -> Vec<u32> {
    let repeated: Vec<f32> = rows.iter().flat_map(|_| logits.iter().copied()).collect();
    let params = up(gpu, &sampling::pack(rows));
    let mut out = gpu.stream.alloc_zeros::<u32>(rows.len()).unwrap();
    gpu.kernels
        .sample(&up(gpu, &repeated), &params, &mut out, logits.len())
        .unwrap();
    down(gpu, &out)
}

#[test]
fn gpu_sampling_keeps_to_the_cpu_samplers_filters() {
    let Some(gpu) = backend() else { return };
    let vocab = 128_256;
    // Logits spread like a model's, in full f32 precision so that no two tie at a filter's
    // boundary (where the GPU keeps every tied token and the CPU the lower ids).
    let row: Vec<f32> = random(vocab, 31)
        .iter()
        .zip(random(vocab, 32))
        .map(|(a, b)| f(*a) * 8.0 + f(b) * 0.03)
        .collect();
    let base = DeviceSampling {
        temperature: 0.8,
        seed: 7,
        ..UNFILTERED
    };
    let settings = [
        DeviceSampling { top_k: 40, ..base },
        DeviceSampling { top_p: 0.9, ..base },
        DeviceSampling { min_p: 0.1, ..base },
        DeviceSampling {
            top_k: 50,
            top_p: 0.8,
            min_p: 0.05,
            temperature: 1.3,
            ..base
        },
        DeviceSampling { top_k: 1, ..base },
    ];
    for setting in settings {
        let kept = kept_by_the_cpu_sampler(&row, &setting);
        // 256 draws: the same logits with seeds 0..256.
        let rows = seeded(setting, 0, 256);
        let tokens = sample_on_gpu(&gpu, &row, &rows);
        for token in &tokens {
            assert!(
                kept.contains(token),
                "{setting:?}: token {token} is outside {kept:?}"
            );
        }
        if kept.len() > 1 {
            let distinct: std::collections::HashSet<_> = tokens.iter().collect();
            assert!(
                distinct.len() > 1,
                "{setting:?}: every seed drew the same token"
            );
        }
        // The same seed and step draw the same token again.
        assert_eq!(tokens, sample_on_gpu(&gpu, &row, &rows), "{setting:?}");
    }
    // Greedy is the argmax.
    let greedy = DeviceSampling {
        temperature: 0.0,
        ..base
    };
    assert_eq!(
        sample_on_gpu(&gpu, &row, &[greedy]),
        vec![kept_by_the_cpu_sampler(&row, &DeviceSampling { top_k: 1, ..base })[0]]
    );
}

#[test]
fn gpu_sampling_draws_in_proportion_to_the_probabilities() {
    let Some(gpu) = backend() else { return };
    let vocab = 1000;
    let probs = [0.5f32, 0.25, 0.15, 0.10];
    let mut row = vec![f32::NEG_INFINITY; vocab];
    for (i, p) in probs.iter().enumerate() {
        row[100 * i + 7] = p.ln();
    }
    let draws = 8192;
    let rows = seeded(
        DeviceSampling {
            step: 3,
            ..UNFILTERED
        },
        1000,
        draws,
    );
    let tokens = sample_on_gpu(&gpu, &row, &rows);
    for (i, p) in probs.iter().enumerate() {
        let share = tokens
            .iter()
            .filter(|&&t| t as usize == 100 * i + 7)
            .count() as f32
            / draws as f32;
        assert!(
            (share - p).abs() < 0.03,
            "token {}: drawn {share}, probability {p}",
            100 * i + 7
        );
    }
    assert!(tokens.iter().all(|&t| row[t as usize].is_finite()));
}

/// With nothing filtered out of a large vocabulary, a token of negligible weight is never
/// drawn: no draw's randomness may be exactly 0 or 1, which would let any token win.
#[test]
fn gpu_sampling_never_draws_a_negligible_token_from_a_large_vocabulary() {
    let Some(gpu) = backend() else { return };
    let vocab = 151_936;
    // Token 0 has weight 1; each other e^-30 (all of them together about 1.4e-8).
    let mut row = vec![-30.0f32; vocab];
    row[0] = 0.0;
    // 512 rows of 151,936 logits (311 MB): the old draw, which could be exactly 1, put a
    // stray in about 1% of draws.
    let draws = 512;
    let tokens = sample_on_gpu(&gpu, &row, &seeded(UNFILTERED, 0, draws));
    let strays = tokens.iter().filter(|&&t| t != 0).count();
    assert_eq!(
        strays, 0,
        "{strays} of {draws} draws picked a token of weight e^-30"
    );
}
