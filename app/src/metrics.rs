//! Prometheus metrics under vLLM's names (`vllm:*`), so dashboards and llm-d's endpoint
//! picker read agentbox unchanged.

use std::time::Duration;

use anyhow::Context;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::models::ModelRegistry;

pub struct Metrics {
    registry: Registry,
    running: IntGaugeVec,
    waiting: IntGaugeVec,
    kv_cache_usage: GaugeVec,
    preemptions: IntGaugeVec,
    prefix_cache_queries: IntGaugeVec,
    prefix_cache_hits: IntGaugeVec,
    time_to_first_token: HistogramVec,
    time_per_output_token: HistogramVec,
    e2e_latency: HistogramVec,
    queue_time: HistogramVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    request_success: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// What one finished generation reports.
pub struct GenerationRecord<'a> {
    pub model: &'a str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub queued: Duration,
    pub first_token: Duration,
    pub total: Duration,
    pub finish_reason: &'a str,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let label = &["model_name"];
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), label);
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                label,
            )
        };
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), label);
        let metrics = Self {
            running: gauge(
                "vllm:num_requests_running",
                "Requests in the running batch.",
            )?,
            waiting: gauge(
                "vllm:num_requests_waiting",
                "Requests waiting to be scheduled.",
            )?,
            kv_cache_usage: GaugeVec::new(
                Opts::new(
                    "vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.",
                ),
                label,
            )?,
            // Counters in vLLM; exported from the engine's own running totals.
            preemptions: gauge(
                "vllm:num_preemptions_total",
                "Cumulative number of preemptions from the engine.",
            )?,
            prefix_cache_queries: gauge(
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_cache_hits: gauge(
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
            )?,
            time_to_first_token: histogram(
                "vllm:time_to_first_token_seconds",
                "Time to first token in seconds.",
                LATENCY_BUCKETS,
            )?,
            time_per_output_token: histogram(
                "vllm:time_per_output_token_seconds",
                "Time per output token in seconds.",
                TOKEN_LATENCY_BUCKETS,
            )?,
            e2e_latency: histogram(
                "vllm:e2e_request_latency_seconds",
                "End-to-end request latency in seconds.",
                LATENCY_BUCKETS,
            )?,
            queue_time: histogram(
                "vllm:request_queue_time_seconds",
                "Time spent waiting in the queue in seconds.",
                LATENCY_BUCKETS,
            )?,
            prompt_tokens: counter("vllm:prompt_tokens_total", "Prefill tokens processed.")?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Generation tokens processed.",
            )?,
            request_success: IntCounterVec::new(
                Opts::new("vllm:request_success_total", "Finished requests."),
                &["model_name", "finished_reason"],
            )?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.running.clone()))?;
        r.register(Box::new(metrics.waiting.clone()))?;
        r.register(Box::new(metrics.kv_cache_usage.clone()))?;
        r.register(Box::new(metrics.preemptions.clone()))?;
        r.register(Box::new(metrics.prefix_cache_queries.clone()))?;
        r.register(Box::new(metrics.prefix_cache_hits.clone()))?;
        r.register(Box::new(metrics.time_to_first_token.clone()))?;
        r.register(Box::new(metrics.time_per_output_token.clone()))?;
        r.register(Box::new(metrics.e2e_latency.clone()))?;
        r.register(Box::new(metrics.queue_time.clone()))?;
        r.register(Box::new(metrics.prompt_tokens.clone()))?;
        r.register(Box::new(metrics.generation_tokens.clone()))?;
        r.register(Box::new(metrics.request_success.clone()))?;
        Ok(metrics)
    }

    /// The registry other parts (the gateway) add their series to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates every series for a model up front, so dashboards see zeros, not gaps.
    pub fn register_model(&self, model: &str) {
        let labels = &[model];
        self.running.with_label_values(labels).set(0);
        self.waiting.with_label_values(labels).set(0);
        self.kv_cache_usage.with_label_values(labels).set(0.0);
        self.preemptions.with_label_values(labels).set(0);
        self.prefix_cache_queries.with_label_values(labels).set(0);
        self.prefix_cache_hits.with_label_values(labels).set(0);
        self.time_to_first_token.with_label_values(labels);
        self.time_per_output_token.with_label_values(labels);
        self.e2e_latency.with_label_values(labels);
        self.queue_time.with_label_values(labels);
        self.prompt_tokens.with_label_values(labels);
        self.generation_tokens.with_label_values(labels);
    }

    pub fn record_generation(&self, record: &GenerationRecord<'_>) {
        let model = &[record.model];
        self.prompt_tokens
            .with_label_values(model)
            .inc_by(record.prompt_tokens as u64);
        self.generation_tokens
            .with_label_values(model)
            .inc_by(record.completion_tokens as u64);
        self.queue_time
            .with_label_values(model)
            .observe(record.queued.as_secs_f64());
        self.e2e_latency
            .with_label_values(model)
            .observe(record.total.as_secs_f64());
        if record.completion_tokens > 0 {
            self.time_to_first_token
                .with_label_values(model)
                .observe(record.first_token.as_secs_f64());
        }
        if record.completion_tokens > 1 {
            let decode = record.total.saturating_sub(record.first_token);
            self.time_per_output_token
                .with_label_values(model)
                .observe(decode.as_secs_f64() / (record.completion_tokens - 1) as f64);
        }
        self.request_success
            .with_label_values(&[record.model, record.finish_reason])
            .inc();
    }

    /// The Prometheus text exposition, with the engine's queue gauges read now.
    pub fn render(&self, models: Option<&ModelRegistry>) -> anyhow::Result<String> {
        if let Some(models) = models {
            for (name, model) in models.chat_models() {
                let stats = model.stats();
                self.running
                    .with_label_values(&[name])
                    .set(stats.running as i64);
                self.waiting
                    .with_label_values(&[name])
                    .set(stats.waiting as i64);
                self.kv_cache_usage
                    .with_label_values(&[name])
                    .set(stats.used_blocks as f64 / stats.total_blocks.max(1) as f64);
                self.preemptions
                    .with_label_values(&[name])
                    .set(stats.preemptions as i64);
                self.prefix_cache_queries
                    .with_label_values(&[name])
                    .set(stats.prefix_cache_queries as i64);
                self.prefix_cache_hits
                    .with_label_values(&[name])
                    .set(stats.prefix_cache_hits as i64);
            }
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .context("encoding metrics")?;
        String::from_utf8(buffer).context("metrics are not UTF-8")
    }
}
