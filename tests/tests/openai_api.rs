//! The OpenAI-compatible API over raw HTTP: shapes, streaming framing, errors, batching.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{CHAT_MODEL, EMBED_MODEL, Server, sse_payloads};
use serde_json::{Value, json};

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn greedy_chat(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

#[tokio::test]
async fn models_chat_and_errors() {
    let server = Server::start().await;

    let models: Value = reqwest::get(server.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec![CHAT_MODEL, EMBED_MODEL]);

    // Non-streamed greedy chat, and its usage accounting.
    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        greedy_chat("What is the capital of France?", 24),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!content.is_empty());
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Streamed: same text, chunk framing, final usage chunk, [DONE].
    let mut request = greedy_chat("What is the capital of France?", 24);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let payloads = sse_payloads(response).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], body["usage"]);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );

    // Errors in OpenAI's shape.
    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");

    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let mut bad = greedy_chat("hi", 5);
    bad["temperature"] = json!("hot");
    let (status, body) = post(&server, "/v1/chat/completions", bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");

    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "model");

    let (status, body) = post(&server, "/v1/chat/completions", greedy_chat("hi", 9000)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("8192"),
        "{body}"
    );

    // A huge max_tokens is refused, never clamped (the sum is computed saturating).
    let mut huge = greedy_chat("hi", 1);
    huge["max_tokens"] = json!(i64::MAX);
    let (status, body) = post(&server, "/v1/chat/completions", huge).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn concurrent_greedy_requests_match_a_single_one() {
    let server = Server::start().await;
    let request = greedy_chat("Write a haiku about the sea.", 32);
    let (_, single) = post(&server, "/v1/chat/completions", request.clone()).await;
    let expected = single["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    let batch = (0..8).map(|_| post(&server, "/v1/chat/completions", request.clone()));
    let results = futures::future::join_all(batch).await;
    for (status, body) in results {
        assert_eq!(status, 200);
        assert_eq!(
            body["choices"][0]["message"]["content"].as_str().unwrap(),
            expected
        );
    }
}

#[tokio::test]
async fn n_choices_and_seeded_sampling_repeat() {
    let server = Server::start().await;
    let request = json!({
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a short story."}],
        "temperature": 1.0,
        "seed": 7,
        "n": 3,
        "max_tokens": 16,
    });
    let (status, first) = post(&server, "/v1/chat/completions", request.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = post(&server, "/v1/chat/completions", request).await;
    assert_eq!(first["choices"].as_array().unwrap().len(), 3);
    assert_eq!(first["choices"], second["choices"]);
}

#[tokio::test]
async fn embeddings_are_unit_vectors() {
    let server = Server::start().await;
    let (status, body) = post(&server, "/v1/embeddings", json!({"model": EMBED_MODEL, "input": ["A man is eating food.", "A man is eating a piece of bread."]})).await;
    assert_eq!(status, 200, "{body}");
    let vectors: Vec<Vec<f64>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(vectors[0].len(), 384);
    let cosine: f64 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
    assert!((cosine - 0.7553).abs() < 0.002, "cosine {cosine}");

    let (status, body) = post(
        &server,
        "/v1/embeddings",
        json!({"model": EMBED_MODEL, "input": []}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "input");
}
