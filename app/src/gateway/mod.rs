//! The gateway: OpenAI-API calls whose `model` names a group of the LiteLLM config's
//! `model_list` go to one of that group's upstream deployments (weighted shuffle, retries
//! on failures that happen before any byte reaches the client, cooldowns after repeated
//! failures, fallbacks to other groups); other names stay with the local engine. Also the
//! master key that guards `/v1`.

mod anthropic_wire;
pub mod auth;
mod cache;
pub mod litellm;
mod metrics;
mod upstream;

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    fallbacks: HashMap<String, Vec<String>>,
    context_window_fallbacks: HashMap<String, Vec<String>>,
    /// Recent failures and cooldowns, by deployment id.
    health: parking_lot::Mutex<HashMap<usize, Health>>,
    allowed_fails: u32,
    cooldown: Duration,
    cache: Option<cache::ResponseCache>,
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
                fallbacks: config.fallbacks.iter().cloned().collect(),
                context_window_fallbacks: config.context_window_fallbacks.iter().cloned().collect(),
                health: parking_lot::Mutex::new(HashMap::new()),
                allowed_fails: config.allowed_fails,
                cooldown: config.cooldown,
                cache: config.cache_ttl.map(cache::ResponseCache::new),
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

    /// A deployment's failure counted: past `allowed_fails` in a minute, it cools down.
    fn record_failure(&self, deployment: &Deployment) {
        let now = Instant::now();
        let mut health = self.health.lock();
        let entry = health.entry(deployment.id).or_default();
        if entry
            .window_start
            .is_none_or(|start| now - start > FAILURE_WINDOW)
        {
            entry.window_start = Some(now);
            entry.fails = 0;
        }
        entry.fails += 1;
        if entry.fails > self.allowed_fails {
            entry.cooling_until = Some(now + self.cooldown);
            entry.fails = 0;
            entry.window_start = None;
            tracing::warn!(
                model = %deployment.model_name,
                deployment = deployment.id,
                "deployment cooling down for {:?} after repeated failures",
                self.cooldown
            );
        }
    }

    /// How long until the deployment may be used again; `None` if it may be now.
    fn cooling(&self, deployment: &Deployment) -> Option<Duration> {
        let until = self.health.lock().get(&deployment.id)?.cooling_until?;
        until.checked_duration_since(Instant::now())
    }

    /// The deployments behind a gateway model name.
    pub fn group(&self, model: &str) -> Option<&[Deployment]> {
        self.groups.get(model).map(Vec::as_slice)
    }
}

/// Failures are counted over this window for `allowed_fails`.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Health {
    window_start: Option<Instant>,
    fails: u32,
    cooling_until: Option<Instant>,
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
