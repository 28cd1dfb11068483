//! `--device`: an explicit `cuda` without a usable GPU stops start-up with a clear message,
//! a misspelt device is refused naming the choices, and `auto` falls back to the CPU, says
//! so, and serves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::Command;

use common::{CHAT_MODEL, Server, binary, models_dir};
use serde_json::{Value, json};

fn start_and_fail(device: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--device", device])
        .arg("--data-dir")
        .arg(dir.path())
        .env("AGENTBOX_MODELS_DIR", models_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "--device {device} started:\n{stderr}"
    );
    stderr
}

fn has_nvidia_gpu() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
}

#[test]
fn cuda_without_a_gpu_stops_start_up_saying_why() {
    if has_nvidia_gpu() {
        eprintln!("this machine has an NVIDIA GPU: `--device cuda` would start");
        return;
    }
    let stderr = start_and_fail("cuda");
    assert!(stderr.contains("device cuda:0"), "{stderr}");
    assert!(stderr.contains("no usable CUDA GPU"), "{stderr}");
    assert!(stderr.contains("--device cpu"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // It stops before serving anything.
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn an_unknown_device_is_refused_naming_the_choices() {
    let stderr = start_and_fail("tpu:0");
    assert!(stderr.contains("engine.device"), "{stderr}");
    assert!(stderr.contains("auto, cpu, cuda or cuda:N"), "{stderr}");
}

#[tokio::test]
async fn auto_falls_back_to_the_cpu_says_so_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &["--device", "auto"]).await;
    let log = server.log();
    if has_nvidia_gpu() {
        assert!(log.contains("device: cuda:0"), "{log}");
    } else {
        assert!(
            log.contains("device: cpu (auto found no usable GPU"),
            "{log}"
        );
        assert!(log.contains("device=cpu"), "{log}");
    }
    let body: Value = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 4,
            "temperature": 0
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4, "{body}");
}
