//! The gateway: OpenAI-API calls whose `model` names a group of the LiteLLM config's
//! `model_list` go to one of that group's upstream deployments (weighted shuffle, retries
//! on failures that happen before any byte reaches the client); other names stay with the
//! local engine. Also the master key that guards `/v1`.

mod anthropic_wire;
pub mod auth;
pub mod litellm;
mod metrics;
mod upstream;

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub use self::litellm::{Deployment, LiteLlmConfig};
pub use self::upstream::forward;
use crate::error::AppError;
use crate::state::AppState;

/// Providers served: those that speak OpenAI's wire format at `api_base`, and Anthropic.
const SUPPORTED: &[&str] = &["openai", "hosted_vllm", "openai_compatible", "anthropic"];

pub struct Gateway {
    groups: HashMap<String, Vec<Deployment>>,
    metrics: metrics::GatewayMetrics,
    client: reqwest::Client,
    num_retries: u32,
    default_timeout: std::time::Duration,
}

impl Gateway {
    /// The routable groups of `config`; deployments of providers not supported yet are
    /// left out, and each is reported in the returned warnings.
    pub fn new(
        config: &LiteLlmConfig,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let metrics = metrics::GatewayMetrics::new(registry)?;
        let mut warnings = Vec::new();
        let mut groups: HashMap<String, Vec<Deployment>> = HashMap::new();
        for deployment in &config.deployments {
            if !SUPPORTED.contains(&deployment.provider.as_str()) {
                warnings.push(format!(
                    "model {:?}: provider {:?} is not supported yet; this deployment is not served",
                    deployment.model_name, deployment.provider
                ));
                continue;
            }
            metrics.register_deployment(deployment);
            groups
                .entry(deployment.model_name.clone())
                .or_default()
                .push(deployment.clone());
        }
        let client = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build()?;
        Ok((
            Self {
                groups,
                metrics,
                client,
                num_retries: config.num_retries,
                default_timeout: config
                    .timeout
                    .unwrap_or(std::time::Duration::from_secs(600)),
            },
            warnings,
        ))
    }

    /// The model names clients can ask the gateway for.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// The deployments behind a gateway model name.
    pub fn group(&self, model: &str) -> Option<&[Deployment]> {
        self.groups.get(model).map(Vec::as_slice)
    }
}

/// The largest body the gateway buffers to read its `model` (as the server's own limit).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Middleware on the `/v1` inference routes: sends gateway models upstream, and passes
/// everything else (local models, bad bodies) on to the local handlers untouched.
pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(gateway) = state.gateway.clone() else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return AppError::bad_request(
                "body",
                format!("could not read the request body: {error}"),
            )
            .into_response();
        }
    };
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let group = body
        .as_ref()
        .and_then(|b| b.get("model"))
        .and_then(Value::as_str)
        .and_then(|model| gateway.group(model));
    match (group, body) {
        (Some(group), Some(body)) => {
            let path = parts.uri.path().trim_start_matches("/v1").to_string();
            upstream::forward(&gateway, group, &path, body).await
        }
        _ => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}
