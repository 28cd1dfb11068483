//! The gateway: OpenAI-API calls whose `model` names a group of the LiteLLM config's
//! `model_list` go to one of that group's upstream deployments (chosen by the routing
//! strategy; retries on failures that happen before any byte reaches the client, cooldowns
//! after repeated failures, fallbacks to other groups); other names stay with the local
//! engine. Also who may call (the master key, virtual keys with their limits) and what
//! every call costs (`ledger`, `meter`), for local models too.

mod anthropic_wire;
pub mod auth;
mod bedrock;
mod cache;
pub mod key_api;
pub mod keys;
pub mod ledger;
pub mod litellm;
pub mod meter;
mod metrics;
pub mod routing;
pub mod spend_api;
mod upstream;
mod usage;

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use self::ledger::Ledger;
pub use self::litellm::{Deployment, LiteLlmConfig};
pub use self::upstream::forward;
use crate::pricing::PriceTable;

/// The OpenAI routes the gateway forwards, in the order of `Gateway::endpoints`.
const ROUTES: [&str; 3] = ["/chat/completions", "/completions", "/embeddings"];

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    crate::clock::unix_ms().div_euclid(1000)
}

/// Providers served: those that speak OpenAI's wire format at `api_base`, Anthropic and
/// Bedrock (Converse).
const SUPPORTED: &[&str] = &[
    "openai",
    "hosted_vllm",
    "openai_compatible",
    "anthropic",
    "bedrock",
];

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
    stream_timeout: Option<Duration>,
    strategy: routing::Strategy,
    /// Routing's view of each deployment, and its price per token, by deployment id.
    stats: Vec<routing::DeploymentStats>,
    price_per_token: Vec<f64>,
    /// OpenAI-compatible deployments' URLs for `ROUTES`, by deployment id, parsed once.
    endpoints: HashMap<usize, Vec<reqwest::Url>>,
}

impl Gateway {
    /// The routable groups of `config`; deployments of providers not supported yet are
    /// left out, and each is reported in the returned warnings.
    pub fn new(
        config: &LiteLlmConfig,
        prices: &PriceTable,
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
        let slots = config
            .deployments
            .iter()
            .map(|d| d.id + 1)
            .max()
            .unwrap_or(0);
        let today = crate::pricing::today();
        let mut price_per_token = vec![0.0; slots];
        for d in &config.deployments {
            price_per_token[d.id] = d
                .price
                .unwrap_or_else(|| prices.price(&d.upstream_model, false, today))
                .per_token();
        }
        let endpoints = config
            .deployments
            .iter()
            .filter_map(|d| {
                let urls: Result<Vec<_>, _> = ROUTES
                    .iter()
                    .map(|path| upstream::endpoint(d, path))
                    .collect();
                Some((d.id, urls.ok()?))
            })
            .collect();
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
                stream_timeout: config.stream_timeout,
                strategy: config.routing_strategy,
                stats: (0..slots)
                    .map(|_| routing::DeploymentStats::default())
                    .collect(),
                price_per_token,
                endpoints,
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

    /// The deployment's parsed URL for `path`, if it is one of `ROUTES`.
    fn endpoint(&self, deployment: &Deployment, path: &str) -> Option<&reqwest::Url> {
        let index = ROUTES.iter().position(|r| *r == path)?;
        self.endpoints.get(&deployment.id)?.get(index)
    }

    fn stats(&self, deployment: &Deployment) -> Option<&routing::DeploymentStats> {
        self.stats.get(deployment.id)
    }

    /// A finished call's tokens, for usage-based routing and deployments' tpm.
    pub fn record_tokens(&self, deployment: usize, tokens: u64) {
        if let Some(stats) = self.stats.get(deployment) {
            stats.record_tokens(tokens, unix_now());
        }
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
