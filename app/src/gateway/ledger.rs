//! The `Ledger`: who may call (virtual keys), what calls cost (the price table), and where
//! spend goes (the key's running total, the spend log, LiteLLM's spend and token series).
//! It serves every inference call, local models included, with or without a LiteLLM file.

use std::sync::Arc;

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

use super::keys::{KeyPermit, KeyRegistry};
use super::usage::Usage;
use crate::pricing::{Price, PriceTable};
use crate::store::{SpendRecord, Writer};

pub struct Ledger {
    pub keys: KeyRegistry,
    pub prices: Arc<PriceTable>,
    pub writer: Writer,
    /// The SHA-256 of the master key, logged as the `api_key` of its calls.
    pub master_token: Option<String>,
    spend: CounterVec,
    total_tokens: IntCounterVec,
    input_tokens: IntCounterVec,
    output_tokens: IntCounterVec,
}

/// LiteLLM's labels on its spend and token series.
const LABELS: &[&str] = &[
    "end_user",
    "hashed_api_key",
    "api_key_alias",
    "model",
    "team",
    "team_alias",
    "user",
];

/// Who served a call, attached to the response as an extension by whoever answered.
#[derive(Debug, Clone)]
pub struct Served {
    /// The gateway deployment's id; `None` for local models and cache hits.
    pub deployment: Option<usize>,
    pub provider: String,
    /// The model that answered, as its server names it.
    pub model: String,
    pub api_base: String,
    /// The deployment's own price (`model_info`), over the price table's.
    pub price: Option<Price>,
    pub cache_hit: bool,
}

/// One finished call, as the meter saw it.
pub struct Finished<'a> {
    pub request_id: String,
    pub call_type: &'a str,
    pub requested_model: &'a str,
    pub served: Option<&'a Served>,
    pub usage: Usage,
    pub status: u16,
    pub start_ms: i64,
    pub end_ms: i64,
    pub user: String,
    pub tags: Vec<String>,
    pub api_key: String,
    pub permit: Option<&'a KeyPermit>,
}

impl Ledger {
    pub fn new(
        keys: KeyRegistry,
        prices: Arc<PriceTable>,
        writer: Writer,
        master_key: Option<&str>,
        registry: &Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let spend = CounterVec::new(
            Opts::new("litellm_spend_metric", "Spend on LLM requests, in USD."),
            LABELS,
        )?;
        let tokens = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), LABELS);
        let total_tokens = tokens(
            "litellm_total_tokens_metric",
            "Input plus output tokens of LLM requests.",
        )?;
        let input_tokens = tokens(
            "litellm_input_tokens_metric",
            "Input tokens of LLM requests.",
        )?;
        let output_tokens = tokens(
            "litellm_output_tokens_metric",
            "Output tokens of LLM requests.",
        )?;
        registry.register(Box::new(spend.clone()))?;
        registry.register(Box::new(total_tokens.clone()))?;
        registry.register(Box::new(input_tokens.clone()))?;
        registry.register(Box::new(output_tokens.clone()))?;
        Ok(Arc::new(Self {
            keys,
            prices,
            writer,
            master_token: master_key.map(super::keys::hash_key),
            spend,
            total_tokens,
            input_tokens,
            output_tokens,
        }))
    }

    /// Prices a finished call and records it everywhere spend is kept; returns its cost.
    pub fn record(&self, call: Finished<'_>) -> f64 {
        let now_secs = call.end_ms.div_euclid(1000);
        let local = call.served.is_none();
        let answered_by = call
            .served
            .map_or(call.requested_model, |s| s.model.as_str());
        let cache_hit = call.served.is_some_and(|s| s.cache_hit);
        let price = call.served.and_then(|s| s.price).unwrap_or_else(|| {
            self.prices
                .price(answered_by, local, now_secs.div_euclid(86_400))
        });
        let cost = if cache_hit || call.status >= 400 {
            0.0
        } else {
            price.cost(call.usage.input_tokens, call.usage.output_tokens)
        };
        let key_spend = call
            .permit
            .map(|p| p.record(call.usage.total(), cost, now_secs));
        let alias = call.permit.and_then(|p| p.key().alias());
        let labels = [
            call.user.as_str(),
            call.api_key.as_str(),
            alias.as_deref().unwrap_or(""),
            call.requested_model,
            "",
            "",
            "",
        ];
        self.spend.with_label_values(&labels).inc_by(cost);
        self.total_tokens
            .with_label_values(&labels)
            .inc_by(call.usage.total());
        self.input_tokens
            .with_label_values(&labels)
            .inc_by(call.usage.input_tokens);
        self.output_tokens
            .with_label_values(&labels)
            .inc_by(call.usage.output_tokens);
        self.writer.record_spend(SpendRecord {
            request_id: call.request_id,
            call_type: call.call_type.to_string(),
            api_key: call.api_key,
            key_alias: alias,
            spend: cost,
            prompt_tokens: call.usage.input_tokens,
            completion_tokens: call.usage.output_tokens,
            start_time_ms: call.start_ms,
            end_time_ms: call.end_ms,
            model: answered_by.to_string(),
            model_group: call.requested_model.to_string(),
            provider: call
                .served
                .map_or_else(|| "agentbox".to_string(), |s| s.provider.clone()),
            api_base: call.served.map_or_else(String::new, |s| s.api_base.clone()),
            user: call.user,
            status_code: call.status,
            cache_hit,
            request_tags: call.tags,
            key_spend,
        });
        cost
    }
}
