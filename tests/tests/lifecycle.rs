//! Start-up and shutdown of the real binary: config errors, graceful SIGTERM with a stream
//! in flight, and conversations that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::Command;

use common::{CHAT_MODEL, Server, binary, models_dir};
use futures::StreamExt;
use serde_json::{Value, json};

#[test]
fn a_bad_config_stops_start_up_naming_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "models:\n  - name: x\n    path: missing.gguf\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .env("AGENTBOX_MODELS_DIR", models_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("models[0].path"), "{stderr}");
    assert!(stderr.contains("agentbox.yaml"), "{stderr}");

    std::fs::write(&config, "engine:\n  max_runing: 4\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_runing"), "{stderr}");
    assert!(stderr.contains("agentbox.yaml"), "{stderr}");
}

#[tokio::test]
async fn sigterm_ends_a_running_stream_properly_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    // A short grace period: the stream below cannot finish in time and must be cut cleanly.
    std::fs::write(&config, "engine:\n  shutdown_grace_secs: 1\n").unwrap();
    let mut server = Server::start_in(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 4000,
            "temperature": 0,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // Wait for the first content before asking the server to stop.
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if text.contains("\"content\":\"") && text.matches("data:").count() > 2 {
            break;
        }
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server.log())
    });
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let (status, log) = status.await.unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
}

#[tokio::test]
async fn conversations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(server.url("/api/conversations"))
        .json(&json!({"title": "Trip to Paris", "model": CHAT_MODEL}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    for (role, content) in [("user", "Where should I go?"), ("assistant", "The Louvre.")] {
        let response = client
            .post(server.url(&format!("/api/conversations/{id}/messages")))
            .json(&json!({"role": role, "content": content}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    assert!(server.terminate().success());

    let server = Server::start_in(dir.path(), &[]).await;
    let list: Value = reqwest::get(server.url("/api/conversations"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["title"], "Trip to Paris");
    let full: Value = reqwest::get(server.url(&format!("/api/conversations/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contents: Vec<&str> = full["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, vec!["Where should I go?", "The Louvre."]);

    let missing = reqwest::get(server.url("/api/conversations/nope"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "engine:\n  max_running: 1\n  max_waiting: 1\n").unwrap();
    let server = Server::start_in(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let client = reqwest::Client::new();
    let long = json!({
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 400,
        "ignore_eos": true,
        "stream": true,
    });
    // The first request runs; wait until it streams.
    let running = client
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    let mut running_body = running.bytes_stream();
    running_body.next().await.unwrap().unwrap();
    // The second waits in the queue (max_running 1)...
    let waiting = client
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send();
    let waiting = tokio::spawn(waiting);
    // Wait until /metrics shows it queued (a fixed sleep races a busy machine)...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let queued = metrics.lines().any(|line| {
            line.starts_with("vllm:num_requests_waiting")
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
        });
        if queued {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second request never queued:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ...so the third finds the queue full.
    let refused = client
        .post(server.url("/v1/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    drop(running_body);
    waiting.abort();
}
