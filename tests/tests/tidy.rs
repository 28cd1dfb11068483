//! Tidy checks over the source tree: `//!` headers everywhere, no `dbg!`, and the crate
//! boundaries of ARCHITECTURE.md (`ui` never depends on `engine`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "dist" && !name.to_string_lossy().starts_with('.') {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let root = common::repo_root();
    let mut files = Vec::new();
    for krate in ["app", "engine", "ui", "tests", "vector"] {
        rust_sources(&root.join(krate), &mut files);
    }
    assert!(files.len() > 10, "found only {} sources", files.len());
    files
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let missing: Vec<String> = all_sources()
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:#?}"
    );
}

#[test]
fn no_dbg_left_behind() {
    let needle = ["dbg", "!("].concat();
    let offenders: Vec<String> = all_sources()
        .into_iter()
        .filter(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .contains(&needle)
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn ui_does_not_depend_on_engine_or_vector() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let name_of = |id: &str| {
        packages
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let ui = packages
        .iter()
        .find(|p| p["name"] == "ui")
        .expect("ui package");
    // Walk ui's whole dependency graph.
    let mut stack = vec![ui["id"].as_str().unwrap().to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let name = name_of(&id);
        assert!(
            name != "engine" && name != "vector" && name != "agentbox",
            "ui depends on {name}"
        );
        if let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) {
            for dep in node["dependencies"].as_array().unwrap() {
                stack.push(dep.as_str().unwrap().to_string());
            }
        }
    }
    assert!(seen.len() > 5, "ui's dependency graph looks empty");
}
