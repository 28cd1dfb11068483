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

async fn scrape(server: &Server) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `(vllm:prefix_cache_queries, vllm:prefix_cache_hits)`, in tokens.
async fn prefix_cache_counters(server: &Server) -> (f64, f64) {
    let text = scrape(server).await;
    (
        metric(&text, "vllm:prefix_cache_queries"),
        metric(&text, "vllm:prefix_cache_hits"),
    )
}

/// Polls /metrics until nothing runs or waits and no block is held; returns the last scrape.
/// Blocks are released just after a stream's last event, so this may take a moment.
async fn wait_until_every_block_is_free(server: &Server) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = scrape(server).await;
        let busy = metric(&text, "vllm:num_requests_running")
            + metric(&text, "vllm:num_requests_waiting")
            + metric(&text, "vllm:kv_cache_usage_perc");
        if busy == 0.0 {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "still busy: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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
    // 14 MiB = 39 blocks of 16 tokens (23,040 bytes per token in f16) = 624 tokens; eight
    // requests need ~1,200.
    std::fs::write(
        &config,
        "engine:\n  kv_cache_bytes: 14MiB\n  max_running: 8\n",
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

    let metrics = wait_until_every_block_is_free(&server).await;
    assert!(
        metric(&metrics, "vllm:num_preemptions_total") > 0.0,
        "{metrics}"
    );

    // A request that could never fit is refused at once instead of waiting forever.
    let (status, body) = complete(&server, "hello", 1000).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("624"),
        "{body}"
    );
}

/// `MemAvailable` in bytes, as the server reads it.
fn available_memory() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .unwrap();
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024.0
}

#[tokio::test]
async fn a_kv_budget_can_be_a_share_of_the_available_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "engine:\n  kv_cache_bytes: 2%\n").unwrap();
    let available = available_memory();
    let server = Server::start_in(dir.path(), &["--config", config.to_str().unwrap()]).await;
    // "KV cache: {tokens} tokens in {blocks} blocks ({bytes} bytes per token, {MiB} MiB)"
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("KV cache:"))
        .unwrap_or_else(|| panic!("{log}"));
    let number_before = |marker: &str| -> f64 {
        let head = &line[..line.find(marker).unwrap()];
        head.rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let bytes = number_before(" tokens in") * number_before(" bytes per token");
    // One chat model: the whole 2% (the machine's free memory moves a little meanwhile).
    assert!(
        bytes > 0.015 * available && bytes < 0.025 * available,
        "{bytes} bytes of KV cache, {available} available: {line}"
    );
}

async fn chat_with_system(server: &Server, system: &str, question: &str) -> String {
    let body: Value = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": CHAT_MODEL,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 24, "temperature": 0,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_shared_system_prompt_is_served_from_the_prefix_cache_with_identical_output() {
    let server = Server::start().await;
    let system: String = (0..90)
        .map(|i| format!("Rule {i}: answer politely and briefly. "))
        .collect();

    let cold = chat_with_system(&server, &system, "What is the capital of France?").await;
    let (queries_before, hits_before) = prefix_cache_counters(&server).await;
    assert_eq!(hits_before, 0.0);
    assert!(
        queries_before > 900.0,
        "the system prompt should be ~1,000 tokens"
    );

    // Same prompt again: every whole 16-token block but the one holding the last prompt
    // token comes from the cache.
    let warm = chat_with_system(&server, &system, "What is the capital of France?").await;
    assert_eq!(warm, cold);
    let (_, hits_after_repeat) = prefix_cache_counters(&server).await;
    assert_eq!(
        hits_after_repeat,
        ((queries_before - 1.0) / 16.0).floor() * 16.0
    );

    // A different question after the same system prompt shares its whole blocks too.
    let other = chat_with_system(&server, &system, "Name a colour.").await;
    let (_, hits_after_other) = prefix_cache_counters(&server).await;
    // (All but the question and the template's last tokens, rounded down to a block.)
    assert!(hits_after_other - hits_after_repeat >= queries_before - 48.0);

    // And gives what it gives without any cache (a fresh server).
    let fresh = Server::start().await;
    assert_eq!(
        chat_with_system(&fresh, &system, "Name a colour.").await,
        other
    );
}

/// Issue 3's stress test: 64 concurrent streams of mixed lengths, a third of them dropped by
/// their client part-way, against a KV budget far too small for all of them.
#[tokio::test]
async fn sixty_four_streams_with_cancellations_on_a_tiny_budget() {
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "engine:\n  kv_cache_bytes: 14MiB\n").unwrap();
    let server = Server::start_in(dir.path(), &["--config", config.to_str().unwrap()]).await;

    let prompts = [
        "Once upon a time,",
        "The three primary colors are",
        "def add(a, b):\n",
        "Dear diary, today",
    ];
    let lengths = [4u32, 30, 90];
    let mut expected = std::collections::HashMap::new();
    for prompt in prompts {
        for max_tokens in lengths {
            let (status, body) = complete(&server, prompt, max_tokens).await;
            assert_eq!(status, 200, "{body}");
            expected.insert(
                (prompt, max_tokens),
                body["choices"][0]["text"].as_str().unwrap().to_string(),
            );
        }
    }

    let jobs: Vec<(&str, u32, Option<usize>)> = (0..64)
        .map(|i| {
            (
                prompts[i % 4],
                lengths[(i / 4) % 3],
                if i % 3 == 0 { Some(1 + i % 5) } else { None },
            )
        })
        .collect();
    let runs = jobs.iter().map(|&(prompt, max_tokens, cancel_after)| {
        let url = server.url("/v1/completions");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&json!({
                    "model": CHAT_MODEL, "prompt": prompt, "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": true, "stream": true,
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            let (mut raw, mut chunks) = (String::new(), 0);
            while let Some(bytes) = body.next().await {
                raw.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
                chunks += 1;
                if cancel_after.is_some_and(|n| chunks >= n) {
                    return None; // the client walks away
                }
            }
            Some(raw)
        }
    });
    let results = futures::future::join_all(runs).await;

    let mut completed = 0;
    for (&(prompt, max_tokens, _), result) in jobs.iter().zip(results) {
        let Some(raw) = result else { continue };
        completed += 1;
        assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
        let text: String = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|p| *p != "[DONE]")
            .map(|p| {
                serde_json::from_str::<Value>(p).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(text, expected[&(prompt, max_tokens)]);
    }
    assert!(completed >= 40, "only {completed} streams completed");

    // Every block is free again once the clients are gone.
    let metrics = wait_until_every_block_is_free(&server).await;
    assert!(
        metric(&metrics, "vllm:num_preemptions_total") > 0.0,
        "the budget never ran out"
    );
}

#[tokio::test]
async fn n_choices_compute_their_prompt_once() {
    let server = Server::start().await;
    let prompt: String = (0..60)
        .map(|i| format!("Line {i} of the shared preamble. "))
        .collect();
    let request = |n: u32, seed: u64| {
        json!({
            "model": CHAT_MODEL, "prompt": prompt, "max_tokens": 12,
            "temperature": 0.8, "seed": seed, "n": n,
        })
    };
    let post = |body: Value| {
        let url = server.url("/v1/completions");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };

    let together = post(request(4, 11)).await;
    let (queries, hits) = prefix_cache_counters(&server).await;
    let prompt_tokens = together["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(prompt_tokens > 512.0, "{prompt_tokens}");
    assert_eq!(queries, 4.0 * prompt_tokens);
    // Three of the four choices took the first one's whole 16-token blocks from the cache
    // (all but the last prompt token's block: at least one token is always computed).
    let whole_blocks = ((prompt_tokens - 1.0) / 16.0).floor() * 16.0;
    assert_eq!(hits, 3.0 * whole_blocks);

    // Sharing changes nothing: choice i is what a lone request with seed 11 + i gives.
    for i in 0..4 {
        let alone = post(request(1, 11 + i)).await;
        assert_eq!(
            together["choices"][i as usize]["text"],
            alone["choices"][0]["text"]
        );
    }
}
