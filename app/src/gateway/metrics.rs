//! The gateway's Prometheus series under LiteLLM's names, so LiteLLM dashboards read
//! agentbox: requests and failures per requested model, each deployment's state, and the
//! time the gateway itself adds (also sent as `x-litellm-overhead-duration-ms`).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Deployment;

pub struct GatewayMetrics {
    total_requests: IntCounterVec,
    failed_requests: IntCounterVec,
    deployment_state: IntGaugeVec,
    overhead: HistogramVec,
}

/// LiteLLM's deployment states.
#[derive(Clone, Copy)]
pub enum DeploymentState {
    Healthy = 0,
    Outage = 2,
}

const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let metrics = Self {
            total_requests: IntCounterVec::new(
                Opts::new(
                    "litellm_proxy_total_requests_metric",
                    "Total requests made to the proxy server, by requested model and status.",
                ),
                &["requested_model", "status_code"],
            )?,
            failed_requests: IntCounterVec::new(
                Opts::new(
                    "litellm_proxy_failed_requests_metric",
                    "Requests that failed, by requested model and status.",
                ),
                &["requested_model", "exception_status"],
            )?,
            deployment_state: IntGaugeVec::new(
                Opts::new(
                    "litellm_deployment_state",
                    "The state of a deployment: 0 healthy, 2 its last call failed.",
                ),
                &["litellm_model_name", "api_base", "api_provider"],
            )?,
            overhead: HistogramVec::new(
                HistogramOpts::new(
                    "litellm_overhead_latency_metric",
                    "Time the gateway adds to a request, upstream time excluded, in seconds.",
                )
                .buckets(OVERHEAD_BUCKETS.to_vec()),
                &["model_group"],
            )?,
        };
        registry.register(Box::new(metrics.total_requests.clone()))?;
        registry.register(Box::new(metrics.failed_requests.clone()))?;
        registry.register(Box::new(metrics.deployment_state.clone()))?;
        registry.register(Box::new(metrics.overhead.clone()))?;
        Ok(metrics)
    }

    /// Creates a deployment's state series up front (healthy), so it shows before traffic.
    pub fn register_deployment(&self, deployment: &Deployment) {
        self.set_state(deployment, DeploymentState::Healthy);
    }

    pub fn set_state(&self, deployment: &Deployment, state: DeploymentState) {
        self.deployment_state
            .with_label_values(&[
                deployment.upstream_model.as_str(),
                deployment.api_base.as_deref().unwrap_or(""),
                deployment.provider.as_str(),
            ])
            .set(state as i64);
    }

    pub fn record(&self, model: &str, status: u16, overhead: Duration) {
        let status = status.to_string();
        self.total_requests
            .with_label_values(&[model, status.as_str()])
            .inc();
        if status.as_bytes().first().is_some_and(|b| *b >= b'4') {
            self.failed_requests
                .with_label_values(&[model, status.as_str()])
                .inc();
        }
        self.overhead
            .with_label_values(&[model])
            .observe(overhead.as_secs_f64());
    }
}
