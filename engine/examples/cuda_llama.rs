//! Runs a Hugging Face Llama checkpoint on the CUDA backend for `scripts/gpu_llama_check.py`,
//! which compares the output with transformers on the same weights.
//!
//! Usage: cuda_llama MODEL_DIR PROMPTS_JSON OUT_DIR [NEW_TOKENS]
//! PROMPTS_JSON is a list of token-id lists. Writes into OUT_DIR:
//! - `logits_<i>.f32`: the f32 logits after prompt i (little-endian), prompt run alone;
//! - `ours.json`: `greedy` (each prompt alone), `greedy_batched` (all prompts in one batch,
//!   prefilled together and decoded together), and timings.
//!
//! Greedy picks the argmax of the logits rounded to bf16, as transformers does with a bf16
//! model (its logits are bf16).

use std::path::{Path, PathBuf};
use std::time::Instant;

use engine::backend::cuda::{BLOCK_SIZE, Chunk, CudaBackend, CudaLlama, KvBudget};
use half::bf16;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

struct Sequence {
    tokens: Vec<u32>,
    blocks: Vec<u32>,
    /// Tokens already in the cache.
    cached: usize,
}

/// Hands out fresh cache blocks in order.
struct Blocks(u32);

impl Blocks {
    fn take(&mut self, n: usize) -> Vec<u32> {
        let start = self.0;
        self.0 += n as u32;
        (start..self.0).collect()
    }
}

fn greedy(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        let v = bf16::from_f32(v).to_f32();
        if v > best_value {
            best_value = v;
            best = i;
        }
    }
    best as u32
}

/// One step over `seqs` (each's uncached tokens), then each picks its next token.
fn step(model: &mut CudaLlama, seqs: &mut [Sequence]) -> AnyResult<Vec<Vec<f32>>> {
    let chunks: Vec<Chunk<'_>> = seqs
        .iter()
        .map(|s| Chunk {
            tokens: &s.tokens[s.cached..],
            start: s.cached,
            blocks: &s.blocks,
        })
        .collect();
    let logits = model.forward_chunks(&chunks)?;
    let host = model.gpu().stream.clone_dtoh(&logits)?;
    let vocab = model.config().vocab_size;
    let rows: Vec<Vec<f32>> = host.chunks(vocab).map(<[f32]>::to_vec).collect();
    for (s, row) in seqs.iter_mut().zip(&rows) {
        s.cached = s.tokens.len();
        s.tokens.push(greedy(row));
    }
    Ok(rows)
}

/// What `generate` returns: each prompt's new tokens, the logits after each prompt, and
/// the decode time.
type Generated = (Vec<Vec<u32>>, Vec<Vec<f32>>, f64);

fn generate(
    model: &mut CudaLlama,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    blocks: &mut Blocks,
) -> AnyResult<Generated> {
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .map(|p| Sequence {
            tokens: p.clone(),
            blocks: blocks.take((p.len() + new_tokens).div_ceil(BLOCK_SIZE)),
            cached: 0,
        })
        .collect();
    let first = step(model, &mut seqs)?;
    model.gpu().stream.synchronize()?;
    let started = Instant::now();
    for _ in 1..new_tokens {
        step(model, &mut seqs)?;
    }
    let decode_secs = started.elapsed().as_secs_f64();
    let generated = seqs
        .iter()
        .zip(prompts)
        .map(|(s, p)| s.tokens[p.len()..].to_vec())
        .collect();
    Ok((generated, first, decode_secs))
}

fn run() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: cuda_llama MODEL_DIR PROMPTS_JSON OUT_DIR [NEW_TOKENS]".into());
    }
    let (model_dir, prompts_path, out) = (Path::new(&args[1]), &args[2], PathBuf::from(&args[3]));
    let new_tokens: usize = args.get(4).map_or(Ok(32), |n| n.parse())?;
    let prompts: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(prompts_path)?)?;
    std::fs::create_dir_all(&out)?;

    let started = Instant::now();
    let gpu = CudaBackend::open(0)?;
    let needed: usize = prompts
        .iter()
        .map(|p| (p.len() + new_tokens).div_ceil(BLOCK_SIZE))
        .sum::<usize>()
        * 2;
    let mut model = CudaLlama::load_safetensors(model_dir, gpu, KvBudget::Blocks(needed))?;
    let load_secs = started.elapsed().as_secs_f64();
    let mut blocks = Blocks(0);

    let mut greedy_alone = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (generated, first, _) = generate(
            &mut model,
            std::slice::from_ref(prompt),
            new_tokens,
            &mut blocks,
        )?;
        let bytes: Vec<u8> = first[0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out.join(format!("logits_{i}.f32")), bytes)?;
        greedy_alone.extend(generated);
    }
    let (greedy_batched, _, decode_secs) = generate(&mut model, &prompts, new_tokens, &mut blocks)?;
    let report = serde_json::json!({
        "greedy": greedy_alone,
        "greedy_batched": greedy_batched,
        "load_secs": load_secs,
        "weight_bytes": model.weight_bytes(),
        "batched_decode_tokens_per_sec":
            (prompts.len() * new_tokens.saturating_sub(1)) as f64 / decode_secs.max(1e-9),
        "gpu": model.gpu().info.name,
    });
    std::fs::write(
        out.join("ours.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
