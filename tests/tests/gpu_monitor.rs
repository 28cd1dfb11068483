//! The GPU monitor through the real binary on a machine without a usable GPU (CI): the API
//! and `/metrics` say so plainly, the log says it once, bad queries get OpenAI-shaped 400s,
//! and `agentbox gpu` fails with a clear message. The rendering of real GPU samples is
//! tested from a recording in `app/src/gpu/tests.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Server, binary};
use serde_json::Value;

/// A server with no local models (they are not needed here) and `gpu` settings.
async fn server_with(dir: &Path, gpu_yaml: &str) -> Server {
    let config = dir.join("agentbox.yaml");
    std::fs::write(&config, format!("models: []\n{gpu_yaml}")).unwrap();
    Server::start_in(dir, &["--config", config.to_str().unwrap()]).await
}

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn metrics(server: &Server) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_a_gpu_the_api_and_metrics_say_so_and_the_log_says_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "").await;
    let (status, body) = get_json(&server, "/api/gpu").await;
    assert_eq!(status, 200, "{body}");
    let text = metrics(&server).await;
    if body["available"] == true {
        // A machine with a GPU: the DCGM series are there instead.
        assert!(text.contains("agentbox_gpu_available 1"), "{text}");
        assert!(text.contains("DCGM_FI_DEV_GPU_UTIL{gpu=\"0\""), "{text}");
        return;
    }
    let reason = body["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{body}");
    assert_eq!(body["gpus"], Value::Array(vec![]), "{body}");
    assert_eq!(body["engine"]["device"], "cpu", "{body}");
    assert!(
        text.lines().any(|l| l == "agentbox_gpu_available 0"),
        "{text}"
    );
    assert!(!text.contains("DCGM_"), "{text}");
    // Scrapes and time do not repeat the message.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = metrics(&server).await;
    let _ = get_json(&server, "/api/gpu").await;
    let log = server.log();
    let mentions = log.lines().filter(|l| l.contains("GPU monitor")).count();
    assert_eq!(mentions, 1, "{log}");
    assert!(log.contains(reason), "{log}");
}

#[tokio::test]
async fn a_missing_nvml_library_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(
        dir.path(),
        "gpu:\n  nvml_library: /nonexistent/libnvidia-ml.so.1\n",
    )
    .await;
    let (status, body) = get_json(&server, "/api/gpu").await;
    assert_eq!(status, 200);
    assert_eq!(body["available"], false, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("/nonexistent/libnvidia-ml.so.1"),
        "{reason}"
    );
    assert!(reason.contains("NVIDIA driver"), "{reason}");
    assert!(metrics(&server).await.contains("agentbox_gpu_available 0"));
    // The rest of the server is unaffected.
    let (status, models) = get_json(&server, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"], Value::Array(vec![]));
}

#[tokio::test]
async fn monitoring_can_be_turned_off_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "gpu:\n  enabled: false\n").await;
    let (_, body) = get_json(&server, "/api/gpu").await;
    assert_eq!(body["available"], false);
    assert!(
        body["reason"].as_str().unwrap().contains("gpu.enabled"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_queries_get_openai_shaped_400s_and_empty_history_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), "").await;
    let (status, body) = get_json(&server, "/api/gpu?recent=lots").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "recent", "{body}");
    for hours in ["0", "-3", "1000000", "x"] {
        let (status, body) = get_json(&server, &format!("/api/gpu/history?hours={hours}")).await;
        assert_eq!(status, 400, "{hours}: {body}");
        assert_eq!(body["error"]["param"], "hours", "{body}");
    }
    let (status, body) = get_json(&server, "/api/gpu/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hours"], 24);
    assert_eq!(body["bucket_secs"], 60);
    assert!(body["gpus"].is_array(), "{body}");
}

#[test]
fn a_bad_gpu_setting_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentbox.yaml");
    std::fs::write(&config, "models: []\ngpu:\n  sample_interval_ms: 5\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gpu.sample_interval_ms"), "{stderr}");
}

#[test]
fn the_gpu_command_without_nvml_fails_with_a_clear_message() {
    let output = Command::new(binary())
        .args(["gpu", "--nvml-library", "/nonexistent/libnvidia-ml.so.1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("NVIDIA driver"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}
