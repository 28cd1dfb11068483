//! `ModelRegistry`: the models this server loaded, by the names clients use, and the
//! start-up loading that fills it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::{
    ChatModel, Device, DeviceRequest, ModelSource, Placement, ResolvedDevice, SchedulerOptions,
    SentenceEmbedder,
};

use crate::config::{Config, ModelTask};
use crate::error::AppError;

pub struct LoadedModel {
    pub name: String,
    pub task: ModelTask,
    pub context_length: usize,
    pub created: u64,
}

#[derive(Default)]
pub struct ModelRegistry {
    pub listed: Vec<LoadedModel>,
    chat: HashMap<String, Arc<ChatModel>>,
    embed: HashMap<String, Arc<SentenceEmbedder>>,
}

/// Loads a chat model on the resolved device. A model the GPU backend cannot run (Qwen2's
/// attention biases, for now) falls back to the CPU when the device was `auto`, and fails
/// when `cuda` was asked for.
fn load_chat(
    config: &Config,
    device: &ResolvedDevice,
    source: &ModelSource,
) -> anyhow::Result<ChatModel> {
    let options = SchedulerOptions {
        max_running: config.engine.max_running,
        max_waiting: config.engine.max_waiting,
        max_batched_tokens: config.engine.max_batched_tokens,
        threads: config.threads,
    };
    // Chat models on one GPU split the configured share evenly.
    let chat_models = crate::config::chat_model_count(config.models.iter().map(|m| m.task));
    let placement = Placement {
        device: device.device,
        kv_cache_bytes: config.engine.kv_cache_bytes,
        gpu_memory_utilization: config.engine.gpu_memory_utilization / chat_models as f32,
    };
    match ChatModel::load(source, placement, options.clone()) {
        Ok(chat) => Ok(chat),
        Err(error)
            if config.engine.device == DeviceRequest::Auto && placement.device != Device::Cpu =>
        {
            tracing::warn!(
                "cannot run on {}: {error}; loading it on the CPU",
                placement.device
            );
            let cpu = Placement {
                device: Device::Cpu,
                ..placement
            };
            Ok(ChatModel::load(source, cpu, options)?)
        }
        Err(error) => Err(error.into()),
    }
}

impl ModelRegistry {
    /// Loads every configured model; blocking, so call it off the async runtime.
    pub fn load(config: &Config, device: &ResolvedDevice) -> anyhow::Result<Self> {
        let mut registry = ModelRegistry::default();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for model in &config.models {
            let started = Instant::now();
            let context_length = match model.task {
                ModelTask::Generate => {
                    let source = ModelSource::detect(&model.path)
                        .with_context(|| format!("model {}", model.name))?;
                    let chat = load_chat(config, device, &source).with_context(|| {
                        format!("loading model {} from {}", model.name, model.path.display())
                    })?;
                    let context_length = chat.context_length();
                    let kv = chat.kv_capacity();
                    tracing::info!(
                        model = %model.name,
                        device = %chat.device(),
                        "KV cache: {} tokens in {} blocks ({} bytes per token, {} MiB)",
                        kv.tokens,
                        kv.blocks,
                        kv.bytes_per_token,
                        (kv.tokens * kv.bytes_per_token) >> 20
                    );
                    registry.chat.insert(model.name.clone(), Arc::new(chat));
                    context_length
                }
                ModelTask::Embed => {
                    let embedder = SentenceEmbedder::load(&model.path).with_context(|| {
                        format!("loading model {} from {}", model.name, model.path.display())
                    })?;
                    let context_length = embedder.max_tokens();
                    registry
                        .embed
                        .insert(model.name.clone(), Arc::new(embedder));
                    context_length
                }
            };
            tracing::info!(
                model = %model.name,
                task = model.task.as_str(),
                path = %model.path.display(),
                context_length,
                load_ms = started.elapsed().as_millis() as u64,
                "loaded model"
            );
            registry.listed.push(LoadedModel {
                name: model.name.clone(),
                task: model.task,
                context_length,
                created,
            });
        }
        Ok(registry)
    }

    pub fn chat(&self, name: &str) -> Result<Arc<ChatModel>, AppError> {
        self.chat
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found(name))
    }

    /// The named chat model, or the first one when no name is given (vLLM serves one).
    pub fn chat_or_default(&self, name: Option<&str>) -> Result<Arc<ChatModel>, AppError> {
        match name {
            Some(name) => self.chat(name),
            None => self
                .listed
                .iter()
                .find(|m| m.task == ModelTask::Generate)
                .map_or_else(|| Err(self.not_found("(default)")), |m| self.chat(&m.name)),
        }
    }

    pub fn embedder(&self, name: &str) -> Result<Arc<SentenceEmbedder>, AppError> {
        self.embed
            .get(name)
            .cloned()
            .ok_or_else(|| self.not_found(name))
    }

    pub fn chat_models(&self) -> impl Iterator<Item = (&String, &Arc<ChatModel>)> {
        self.chat.iter()
    }

    fn not_found(&self, name: &str) -> AppError {
        AppError::ModelNotFound(name.to_string())
    }

    /// Ends every generation: running ones get `grace` to finish.
    pub fn shutdown(&self, grace: Duration) {
        for model in self.chat.values() {
            model.shutdown(grace);
        }
    }
}
