//! The gateway through the real binary: a LiteLLM config routes a model name to an
//! upstream (another agentbox, or a scripted fake that fails on purpose), retries stop at
//! `num_retries`, upstream errors keep OpenAI's shape without the upstream's body, and the
//! master key guards `/v1` (and is required to listen beyond loopback).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{CHAT_MODEL, Server, binary};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway-only agentbox (no local models) with this LiteLLM config and extra YAML.
async fn gateway(dir: &Path, litellm: &str, extra_yaml: &str) -> Server {
    let litellm_path = dir.join("litellm.yaml");
    std::fs::write(&litellm_path, litellm).unwrap();
    let config = dir.join("agentbox.yaml");
    std::fs::write(
        &config,
        format!(
            "models: []\ngateway:\n  litellm_config: {}\n{extra_yaml}",
            litellm_path.display()
        ),
    )
    .unwrap();
    Server::start_in(dir, &["--config", config.to_str().unwrap()]).await
}

/// A one-route HTTP upstream: answers the first `failures` requests with 500 and an HTML
/// body, then a fixed chat completion; counts every request.
async fn scripted_upstream(failures: usize) -> (String, Arc<AtomicUsize>) {
    scripted_upstream_failing_with(
        failures,
        "500 Internal Server Error",
        "<html>secret upstream stack trace</html>",
    )
    .await
}

/// As `scripted_upstream`, failing with this status line and body.
async fn scripted_upstream_failing_with(
    failures: usize,
    failure_status: &'static str,
    failure_body: &'static str,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the headers and the declared body.
                loop {
                    let Ok(read) = socket.read(&mut buf).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let (status, body) = if n < failures {
                    (failure_status, failure_body.to_string())
                } else {
                    let reply = json!({"id": "x", "object": "chat.completion", "model": "upstream-model",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
                    ("200 OK", reply.to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
           "max_tokens": 8, "temperature": 0})
}

#[tokio::test]
async fn another_agentbox_serves_a_gateway_model_streamed_or_not() {
    let upstream = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:\n  - model_name: gpt-4\n    litellm_params: {{model: openai/{CHAT_MODEL}, api_base: {}/v1, api_key: sk-upstream}}\n",
        upstream.base_url
    );
    let gw = gateway(dir.path(), &litellm, "").await;
    let client = reqwest::Client::new();

    let direct: Value = client
        .post(upstream.url("/v1/chat/completions"))
        .json(&chat(CHAT_MODEL))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("gpt-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let routed: Value = response.json().await.unwrap();
    assert_eq!(
        routed["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "{routed}"
    );

    let mut streamed = chat("gpt-4");
    streamed["stream"] = json!(true);
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let payloads = common::sse_payloads(response).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let text: String = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        text,
        direct["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let models: Value = client
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "gpt-4", "{models}");
    assert_eq!(models["data"][0]["owned_by"], "gateway");
    // A name neither local nor in the config is still a 404.
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn failures_are_retried_up_to_num_retries_and_never_leak_the_upstream_body() {
    let client = reqwest::Client::new();
    for (num_retries, failures, status, hits_expected) in [(2, 2, 200, 3), (1, 2, 500, 2)] {
        let (url, hits) = scripted_upstream(failures).await;
        let dir = tempfile::tempdir().unwrap();
        let litellm = format!(
            "model_list:\n  - model_name: flaky\n    litellm_params: {{model: openai/upstream-model, api_base: {url}}}\nrouter_settings: {{num_retries: {num_retries}}}\n"
        );
        let gw = gateway(dir.path(), &litellm, "").await;
        let response = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("flaky"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let overhead: f64 = response.headers()["x-litellm-overhead-duration-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.0..1000.0).contains(&overhead), "{overhead}");
        // LiteLLM's series: the request, its failure if any, the deployment's state.
        let metrics = client
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = format!(
            "litellm_proxy_total_requests_metric{{requested_model=\"flaky\",status_code=\"{status}\"}} 1"
        );
        assert!(metrics.contains(&line), "{metrics}");
        let state = if status == 200 { 0 } else { 2 };
        assert!(
            metrics.contains(&format!("litellm_deployment_state{{api_base=\"{url}\",api_provider=\"openai\",litellm_model_name=\"upstream-model\"}} {state}")),
            "{metrics}"
        );
        assert_eq!(
            metrics.contains("litellm_proxy_failed_requests_metric{exception_status=\"500\",requested_model=\"flaky\"} 1"),
            status == 500,
            "{metrics}"
        );
        assert!(
            metrics.contains("litellm_overhead_latency_metric_count{model_group=\"flaky\"} 1"),
            "{metrics}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), hits_expected, "{body}");
        if status == 200 {
            assert_eq!(body["choices"][0]["message"]["content"], "from upstream");
        } else {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("flaky") && message.contains("500"),
                "{message}"
            );
            assert!(!body.to_string().contains("secret"), "{body}");
        }
    }
    // An upstream that is not there: 502 in OpenAI's shape.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:\n  - model_name: gone\n    litellm_params: {{model: openai/m, api_base: http://127.0.0.1:{port}/v1}}\nrouter_settings: {{num_retries: 0}}\n"
    );
    let gw = gateway(dir.path(), &litellm, "").await;
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error", "{body}");
}

#[tokio::test]
async fn the_master_key_guards_v1_and_the_ui_api_but_not_health() {
    let (url, _) = scripted_upstream(0).await;
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/m, api_base: {url}}}\n"
    );
    let gw = gateway(dir.path(), &litellm, "  master_key: sk-test-123\n").await;
    let client = reqwest::Client::new();
    let response = client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let response = client
        .get(gw.url("/v1/models"))
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(gw.url("/v1/models"))
        .bearer_auth("sk-test-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", "sk-test-123")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(gw.url("/tokenize"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        client.get(gw.url("/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The UI's API holds conversations: guarded too; its static files are not.
    let response = client
        .get(gw.url("/api/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(gw.url("/api/conversations"))
        .bearer_auth("sk-test-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
}

#[test]
fn listening_beyond_loopback_needs_a_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "models: []\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("AGENTBOX_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGENTBOX_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
}

#[test]
fn a_litellm_config_with_a_missing_master_key_variable_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let litellm = dir.path().join("litellm.yaml");
    std::fs::write(
        &litellm,
        "model_list: []\ngeneral_settings: {master_key: os.environ/AGENTBOX_TEST_UNSET_KEY}\n",
    )
    .unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "models: []\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--litellm-config")
        .arg(&litellm)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AGENTBOX_TEST_UNSET_KEY is not set"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_failing_group_falls_back_and_a_too_long_prompt_goes_to_a_bigger_model() {
    let (down, down_hits) = scripted_upstream(usize::MAX).await;
    let (small, small_hits) = scripted_upstream_failing_with(
        usize::MAX,
        "400 Bad Request",
        r#"{"error":{"message":"This model's maximum context length is 8 tokens","code":"context_length_exceeded"}}"#,
    )
    .await;
    let (backup, backup_hits) = scripted_upstream(0).await;
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:
  - model_name: down
    litellm_params: {{model: openai/m, api_base: {down}}}
  - model_name: small
    litellm_params: {{model: openai/m, api_base: {small}}}
  - model_name: backup
    litellm_params: {{model: openai/m, api_base: {backup}}}
router_settings:
  num_retries: 1
  allowed_fails: 100
  fallbacks: [{{down: [backup]}}]
  context_window_fallbacks: [{{small: [backup]}}]
"
    );
    let gw = gateway(dir.path(), &litellm, "").await;
    let client = reqwest::Client::new();
    for (model, hits, expected_hits) in [("down", &down_hits, 2), ("small", &small_hits, 1)] {
        let response = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(model))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "from upstream");
        assert_eq!(hits.load(Ordering::SeqCst), expected_hits, "{model}");
    }
    assert_eq!(backup_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_deployment_that_keeps_failing_cools_down() {
    let (bad, bad_hits) = scripted_upstream(usize::MAX).await;
    let (good, good_hits) = scripted_upstream(0).await;
    let (lonely, lonely_hits) = scripted_upstream(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:
  - model_name: pair
    litellm_params: {{model: openai/m, api_base: {bad}}}
  - model_name: pair
    litellm_params: {{model: openai/m, api_base: {good}}}
  - model_name: solo
    litellm_params: {{model: openai/m, api_base: {lonely}}}
router_settings: {{num_retries: 0, allowed_fails: 1, cooldown_time: 60}}
"
    );
    let gw = gateway(dir.path(), &litellm, "").await;
    let client = reqwest::Client::new();
    let call = |model: &'static str| {
        let request = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(model));
        async move { request.send().await.unwrap() }
    };
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(call("pair").await.status().as_u16());
    }
    // Two failures (more than allowed_fails = 1) put the bad deployment to rest: without
    // the cooldown it would take about half of the 20 calls.
    let bad_seen = bad_hits.load(Ordering::SeqCst);
    assert!(bad_seen <= 2, "{bad_seen} hits on the failing deployment");
    assert_eq!(good_hits.load(Ordering::SeqCst), 20 - bad_seen);
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, bad_seen, "{statuses:?}");

    // A group whose only deployment rests answers 429 with Retry-After, without calling it.
    assert_eq!(call("solo").await.status(), 500);
    assert_eq!(call("solo").await.status(), 500);
    let response = call("solo").await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cooling down"), "{body}");
    assert_eq!(lonely_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn identical_requests_are_answered_from_the_cache_unless_told_not_to() {
    let (url, hits) = scripted_upstream(0).await;
    let dir = tempfile::tempdir().unwrap();
    let litellm = format!(
        "model_list:\n  - model_name: cached\n    litellm_params: {{model: openai/m, api_base: {url}}}\nlitellm_settings: {{cache: true}}\n"
    );
    let gw = gateway(dir.path(), &litellm, "").await;
    let client = reqwest::Client::new();
    let send = |body: Value| {
        let request = client.post(gw.url("/v1/chat/completions")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let key = response.headers()["x-litellm-cache-key"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["choices"][0]["message"]["content"], "from upstream");
            key
        }
    };
    let first = send(chat("cached")).await;
    let second = send(chat("cached")).await;
    assert_eq!(first, second);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    // Another question is another key.
    let mut other = chat("cached");
    other["messages"][0]["content"] = json!("Name a fruit.");
    assert_ne!(send(other).await, first);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // `no-cache` goes upstream; `s-maxage: 0` refuses any stored answer.
    let mut fresh = chat("cached");
    fresh["cache"] = json!({"no-cache": true});
    send(fresh).await;
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let mut strict = chat("cached");
    strict["cache"] = json!({"s-maxage": 0});
    send(strict).await;
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}
