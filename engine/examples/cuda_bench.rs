//! The CUDA backend's benchmarks on one GPU, driven by `scripts/gpu_bench.py` (which runs
//! transformers on the same weights and requests for the comparison).
//!
//! Usage: cuda_bench MODEL_DIR REQUESTS_JSON OUT_JSON
//! REQUESTS_JSON: `[{"prompt": [ids], "max_new": n}, ...]`. Measures, in one process:
//! - the device-to-device copy bandwidth (bytes read + written) and a bf16 8192³ cuBLAS
//!   GEMM, the two ceilings;
//! - batch-1 decode (128 tokens after a 16-token prompt) against the bandwidth roofline;
//! - prefill of 8 × 2,048 tokens against the GEMM peak;
//! - the requests at concurrency 1, 16 and all: throughput, time to first token and time
//!   per output token, all requests arriving at once. Greedy sampling runs on the GPU.

use std::path::Path;
use std::time::Instant;

use engine::backend::cuda::{BLOCK_SIZE, Chunk, CudaBackend, CudaLlama, KvBudget};
use half::bf16;
use serde::Deserialize;
use serde_json::json;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Deserialize, Clone)]
struct Request {
    prompt: Vec<u32>,
    max_new: usize,
}

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn random_bf16(n: usize) -> Vec<bf16> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// Device-to-device copy of 2 GiB: bytes read plus bytes written per second.
fn copy_bandwidth(gpu: &CudaBackend) -> AnyResult<f64> {
    let n = 1usize << 31;
    let src = gpu.stream.alloc_zeros::<u8>(n)?;
    let mut dst = gpu.stream.alloc_zeros::<u8>(n)?;
    let mut times = Vec::new();
    for i in 0..12 {
        gpu.stream.synchronize()?;
        let started = Instant::now();
        gpu.stream.memcpy_dtod(&src, &mut dst)?;
        gpu.stream.synchronize()?;
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * n as f64 / median(times))
}

/// A bf16 8192 × 8192 × 8192 product on random data, in TFLOP/s.
fn gemm_peak(gpu: &CudaBackend) -> AnyResult<f64> {
    let n = 8192;
    let x = gpu.stream.clone_htod(&random_bf16(n * n))?;
    let w = gpu.stream.clone_htod(&random_bf16(n * n))?;
    let mut y = gpu.stream.alloc_zeros::<bf16>(n * n)?;
    let mut times = Vec::new();
    for i in 0..13 {
        gpu.stream.synchronize()?;
        let started = Instant::now();
        gpu.gemm.matmul_bf16(&x, &w, &mut y, n, n, n)?;
        gpu.stream.synchronize()?;
        if i >= 3 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (n as f64).powi(3) / median(times) / 1e12)
}

struct Active {
    tokens: Vec<u32>,
    prompt_len: usize,
    cached: usize,
    blocks: Vec<u32>,
    max_new: usize,
    first_token: Option<f64>,
    finished: Option<f64>,
}

/// Serves `requests` together (all arriving at t = 0): one step prefills every prompt,
/// then each step decodes every unfinished sequence. Returns the finished sequences and
/// the wall time.
fn serve(model: &mut CudaLlama, requests: &[Request]) -> AnyResult<(Vec<Active>, f64)> {
    let mut next_block = 0u32;
    let mut seqs: Vec<Active> = requests
        .iter()
        .map(|r| {
            let n = (r.prompt.len() + r.max_new).div_ceil(BLOCK_SIZE) as u32;
            let blocks = (next_block..next_block + n).collect();
            next_block += n;
            Active {
                tokens: r.prompt.clone(),
                prompt_len: r.prompt.len(),
                cached: 0,
                blocks,
                max_new: r.max_new,
                first_token: None,
                finished: None,
            }
        })
        .collect();
    let vocab = model.config().vocab_size;
    model.gpu().stream.synchronize()?;
    let started = Instant::now();
    loop {
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finished.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let chunks: Vec<Chunk<'_>> = active
            .iter()
            .map(|&i| Chunk {
                tokens: &seqs[i].tokens[seqs[i].cached..],
                start: seqs[i].cached,
                blocks: &seqs[i].blocks,
            })
            .collect();
        let logits = model.forward_chunks(&chunks)?;
        let mut ids = model.gpu().stream.alloc_zeros::<u32>(active.len())?;
        model.gpu().kernels.argmax(&logits, &mut ids, vocab)?;
        let ids = model.gpu().stream.clone_dtoh(&ids)?;
        let now = started.elapsed().as_secs_f64();
        for (&i, id) in active.iter().zip(ids) {
            let s = &mut seqs[i];
            s.cached = s.tokens.len();
            s.tokens.push(id);
            s.first_token.get_or_insert(now);
            if s.tokens.len() - s.prompt_len >= s.max_new {
                s.finished = Some(now);
            }
        }
    }
    Ok((seqs, started.elapsed().as_secs_f64()))
}

fn run() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: cuda_bench MODEL_DIR REQUESTS_JSON OUT_JSON".into());
    }
    let requests: Vec<Request> = serde_json::from_str(&std::fs::read_to_string(&args[2])?)?;
    let gpu = CudaBackend::open(0)?;
    let bandwidth = copy_bandwidth(&gpu)?;
    let peak = gemm_peak(&gpu)?;
    eprintln!("copy {:.2} TB/s, GEMM {peak:.0} TFLOP/s", bandwidth / 1e12);
    let mut model = CudaLlama::load_safetensors(
        Path::new(&args[1]),
        gpu,
        KvBudget::GpuMemoryUtilization(0.8),
    )?;
    let c = model.config().clone();

    // Batch-1 decode: 16-token prompt, then 128 tokens (after a warm-up run).
    let one = [Request {
        prompt: (0..16).map(|i| (i * 7919 % c.vocab_size) as u32).collect(),
        max_new: 129,
    }];
    serve(&mut model, &one)?;
    let (seqs, _) = serve(&mut model, &one)?;
    let s = &seqs[0];
    let decode_secs = s.finished.unwrap_or(f64::NAN) - s.first_token.unwrap_or(f64::NAN);
    let decode_tok_s = 128.0 / decode_secs;
    let read = model.weight_bytes_read_per_step() as f64;
    let roofline = read * decode_tok_s / bandwidth;
    eprintln!(
        "batch-1 decode {decode_tok_s:.1} tok/s = {:.1}% of the roofline",
        100.0 * roofline
    );

    // Prefill: 8 sequences of 2,048 tokens in one step.
    let prefill: Vec<Request> = (0..8)
        .map(|s| Request {
            prompt: (0..2048)
                .map(|i| ((i * 31 + s * 977) % c.vocab_size) as u32)
                .collect(),
            max_new: 1,
        })
        .collect();
    serve(&mut model, &prefill)?;
    let mut prefill_times = Vec::new();
    for _ in 0..3 {
        prefill_times.push(serve(&mut model, &prefill)?.1);
    }
    let prefill_secs = median(prefill_times);
    let (h, q, kv, ffn) = (
        c.hidden_size as f64,
        (c.n_heads * c.head_dim) as f64,
        (c.n_kv_heads * c.head_dim) as f64,
        c.ffn_size as f64,
    );
    let per_token = 2.0 * c.n_layers as f64 * (h * q + 2.0 * h * kv + q * h + 3.0 * h * ffn);
    let tokens = 8.0 * 2048.0;
    let attention = 8.0 * c.n_layers as f64 * 4.0 * q * 2048.0 * 2049.0 / 2.0;
    let prefill_tflops = (per_token * tokens + attention) / prefill_secs / 1e12;
    eprintln!(
        "prefill {prefill_tflops:.0} TFLOP/s = {:.1}% of the GEMM peak",
        100.0 * prefill_tflops / peak
    );

    let mut runs = Vec::new();
    for concurrency in [1usize, 16, requests.len()] {
        let subset = &requests[..concurrency.min(requests.len())];
        let (seqs, secs) = serve(&mut model, subset)?;
        let generated: usize = subset.iter().map(|r| r.max_new).sum();
        let ttft: Vec<f64> = seqs.iter().filter_map(|s| s.first_token).collect();
        let tpot: Vec<f64> = seqs
            .iter()
            .filter(|s| s.max_new > 1)
            .filter_map(|s| Some((s.finished? - s.first_token?) / (s.max_new - 1) as f64))
            .collect();
        eprintln!(
            "{concurrency} requests: {:.0} tok/s",
            generated as f64 / secs
        );
        runs.push(json!({
            "concurrency": subset.len(),
            "generated_tokens": generated,
            "secs": secs,
            "tokens_per_sec": generated as f64 / secs,
            "ttft_median_s": median(ttft),
            "tpot_median_s": median(tpot),
        }));
    }
    let report = json!({
        "gpu": model.gpu().info.name,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "gemm_bf16_tflops": peak,
        "weight_bytes": model.weight_bytes(),
        "weight_bytes_read_per_decode_step": model.weight_bytes_read_per_step(),
        "decode_batch1_tokens_per_sec": decode_tok_s,
        "decode_batch1_roofline_fraction": roofline,
        "prefill_8x2048_secs": prefill_secs,
        "prefill_tflops": prefill_tflops,
        "prefill_fraction_of_gemm_peak": prefill_tflops / peak,
        "kv_blocks": model.kv_blocks(),
        "runs": runs,
    });
    std::fs::write(&args[3], serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
