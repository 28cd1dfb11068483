//! The GPU page's JSON: `GET /api/gpu` (current values, recent points and processes per
//! GPU, plus the engine's KV cache and queues) and `GET /api/gpu/history` (one-minute
//! means from the server's store).
//!
//! A reading the GPU does not report is `None`; the page shows "—" for it.

use serde::Deserialize;

use crate::api::{ApiError, request_json};

/// Full-resolution points asked for per GPU: five minutes at the default 1 s interval.
pub const RECENT_POINTS: u64 = 300;

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GpuStatus {
    pub available: bool,
    /// Why there is no GPU to show, when `available` is false.
    pub reason: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub sample_interval_ms: u64,
    pub monitor: Option<MonitorCost>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    pub engine: Engine,
}

/// What the sampling itself has cost the server so far.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MonitorCost {
    pub samples: u64,
    pub cpu_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub device: String,
    pub current: Option<CurrentValues>,
    pub mig: Mig,
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
    /// Models the engine runs on this GPU.
    #[serde(default)]
    pub models: Vec<String>,
    /// Oldest first.
    #[serde(default)]
    pub recent: Vec<ChartPoint>,
}

/// The newest reading of one GPU.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CurrentValues {
    pub gpu_util: Option<u32>,
    pub mem_copy_util: Option<u32>,
    pub fb_used_mib: Option<f64>,
    pub fb_total_mib: Option<f64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub pcie_tx_kbps: Option<u32>,
    pub pcie_rx_kbps: Option<u32>,
    pub last_xid: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Mig {
    /// `None` where the GPU has no MIG support.
    pub enabled: Option<bool>,
    pub pending: Option<bool>,
    #[serde(default)]
    pub instances: Vec<MigInstance>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MigInstance {
    pub index: u32,
    pub uuid: String,
    pub fb_used_mib: Option<f64>,
    pub fb_total_mib: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub name: Option<String>,
    pub used_memory_mib: Option<f64>,
    /// This agentbox server itself.
    pub agentbox: bool,
}

/// One chart point: a single reading (recent) or a bucket's mean (history).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChartPoint {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    pub gpu_util: Option<f64>,
    pub fb_used_mib: Option<f64>,
    pub fb_total_mib: Option<f64>,
    pub power_w: Option<f64>,
    pub temperature_c: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Engine {
    pub device: String,
    #[serde(default)]
    pub models: Vec<EngineModel>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct EngineModel {
    pub name: String,
    pub device: String,
    /// Share of KV-cache blocks in use, 0 to 1.
    pub kv_cache_usage: f64,
    pub kv_cache_tokens: u64,
    pub running: u64,
    pub waiting: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GpuHistory {
    pub bucket_secs: u64,
    pub hours: u64,
    #[serde(default)]
    pub gpus: Vec<HistorySeries>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HistorySeries {
    pub uuid: String,
    /// Oldest first.
    pub points: Vec<ChartPoint>,
}

pub async fn gpu_status() -> Result<GpuStatus, ApiError> {
    request_json("GET", &format!("/api/gpu?recent={RECENT_POINTS}"), None).await
}

pub async fn gpu_history(hours: u64) -> Result<GpuHistory, ApiError> {
    request_json("GET", &format!("/api/gpu/history?hours={hours}"), None).await
}
