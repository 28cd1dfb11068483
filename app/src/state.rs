//! `AppState`: what every handler can reach — the loaded models (filled once loading
//! finishes), the store, the metrics, the GPU monitor, the gateway, the master key and the
//! ledger (virtual keys, prices, spend).

use std::sync::{Arc, OnceLock};

use crate::error::{AppError, AppResult};
use crate::gateway::{Gateway, Ledger};
use crate::gpu::GpuMonitor;
use crate::metrics::Metrics;
use crate::models::ModelRegistry;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub models: Arc<OnceLock<Arc<ModelRegistry>>>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub gpu: Arc<GpuMonitor>,
    /// Upstream deployments from a LiteLLM config, if one was given.
    pub gateway: Option<Arc<Gateway>>,
    pub master_key: Option<Arc<str>>,
    /// Virtual keys, prices and spend: every inference call is metered through it.
    pub ledger: Arc<Ledger>,
    /// Langfuse projects and the automatic-trace settings.
    pub tracing: Arc<crate::traces::Tracing>,
}

impl AppState {
    /// The models, or a 503 while they are still loading.
    pub fn models(&self) -> AppResult<Arc<ModelRegistry>> {
        self.models
            .get()
            .cloned()
            .ok_or_else(AppError::models_loading)
    }

    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
    }
}
