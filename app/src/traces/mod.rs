//! Tracing, in place of Langfuse: Langfuse's public API (batch ingestion, OTLP/HTTP, scores,
//! reads) over the store's traces, and automatic traces of every inference call.
//! `ingest.rs` reads Langfuse batch events, `otlp.rs` decodes OTLP (protobuf or JSON),
//! `otel_map.rs` maps spans to traces and observations as Langfuse does, `api.rs` serves
//! the write routes and `read_api.rs` the reads, `auto.rs` traces the gateway's own calls,
//! `retention.rs` deletes old traces.
//! Projects authenticate with HTTP Basic `public_key:secret_key`, as Langfuse SDKs send.

pub mod api;
pub mod auto;
mod ingest;
mod otel_map;
mod otlp;
pub mod read_api;
pub mod retention;

use axum::http::{HeaderMap, header};
use base64::Engine;

use crate::config::{ProjectConfig, TracesConfig};
use crate::gateway::auth::same;

/// The project automatic traces go to, and the one used without configured projects.
pub const DEFAULT_PROJECT: &str = "default";

pub struct Tracing {
    pub config: TracesConfig,
    /// Without configured projects: the master key is the default project's secret key
    /// (any public key); without a master key either, every caller is the default project.
    master_key: Option<String>,
}

impl Tracing {
    pub fn new(config: TracesConfig, master_key: Option<String>) -> Self {
        Self { config, master_key }
    }

    /// The project the request's Basic credentials name, if they are right.
    pub fn project(&self, headers: &HeaderMap) -> Option<ProjectConfig> {
        let credentials = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let (public, secret) = match &credentials {
            Some(c) => c.split_once(':').map_or((c.as_str(), ""), |(p, s)| (p, s)),
            None => ("", ""),
        };
        if !self.config.projects.is_empty() {
            return self
                .config
                .projects
                .iter()
                .find(|p| same(&p.public_key, public) && same(&p.secret_key, secret))
                .cloned();
        }
        let default = ProjectConfig {
            id: DEFAULT_PROJECT.into(),
            name: Some(DEFAULT_PROJECT.into()),
            public_key: public.to_string(),
            secret_key: String::new(),
        };
        match &self.master_key {
            None => Some(default),
            Some(key) if same(key, secret) => Some(default),
            Some(_) => None,
        }
    }
}
