//! The paged KV cache under pressure: a budget too small for the batch forces preemption,
//! yet every request completes with exactly its solo output, and afterwards every block
//! is free again (checked through /metrics).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{CHAT_MODEL, Server};
use serde_json::{Value, json};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(CHAT_MODEL))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn complete(server: &Server, prompt: &str, max_tokens: u32) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&json!({
            "model": CHAT_MODEL, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_small_kv_budget_preempts_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    // 28 MiB = 39 blocks of 16 tokens = 624 tokens; eight requests need ~1,200.
    std::fs::write(
        &config,
        "engine:\n  kv_cache_bytes: 28MiB\n  max_running: 8\n",
    )
    .unwrap();
    let server = Server::start_in(dir.path(), &["--config", config.to_str().unwrap()]).await;
    assert!(
        server.log().contains("KV cache: 624 tokens"),
        "{}",
        server.log()
    );

    let prompts: Vec<String> = (0..8)
        .map(|i| format!("Story number {i}: once upon a time,"))
        .collect();
    let mut solo = Vec::new();
    for prompt in &prompts {
        let (status, body) = complete(&server, prompt, 120).await;
        assert_eq!(status, 200, "{body}");
        solo.push(body["choices"][0]["text"].as_str().unwrap().to_string());
    }

    let together =
        futures::future::join_all(prompts.iter().map(|p| complete(&server, p, 120))).await;
    for ((status, body), expected) in together.iter().zip(&solo) {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["choices"][0]["text"].as_str().unwrap(), expected);
    }

    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "vllm:num_preemptions_total") > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "vllm:kv_cache_usage_perc"),
        0.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "vllm:num_requests_running"), 0.0);

    // A request that could never fit is refused at once instead of waiting forever.
    let (status, body) = complete(&server, "hello", 1000).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("624"),
        "{body}"
    );
}
