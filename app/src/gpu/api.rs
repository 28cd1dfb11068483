//! `/api/gpu` and `/api/gpu/history`: the GPU page's JSON. Current values, recent
//! full-resolution points and processes per GPU, with the engine's KV-cache usage and
//! queue; or `available: false` and why.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;

use super::history::{HistoryPoint, Ring};
use super::reading::{DeviceReading, MIB};
use super::{GpuMonitor, Status};
use crate::error::{AppError, AppResult};
use crate::models::ModelRegistry;
use crate::state::AppState;

/// Recent points returned per GPU unless `?recent=` says otherwise (5 minutes at 1 s).
const DEFAULT_RECENT: usize = 300;
const MAX_HISTORY_HOURS: u64 = 24 * 7;

#[derive(Serialize)]
pub struct GpuStatus {
    pub available: bool,
    /// Why there is no GPU to show, when `available` is false.
    pub reason: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub sample_interval_ms: u64,
    pub monitor: Option<MonitorCost>,
    pub gpus: Vec<GpuView>,
    pub engine: EngineView,
}

#[derive(Serialize)]
pub struct MonitorCost {
    pub samples: u64,
    pub cpu_seconds: f64,
}

#[derive(Serialize)]
pub struct GpuView {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub device: String,
    pub current: Option<CurrentValues>,
    pub mig: MigView,
    pub processes: Vec<ProcessView>,
    /// Models the engine runs on this GPU.
    pub models: Vec<String>,
    /// Full-resolution points, oldest first.
    pub recent: Vec<HistoryPoint>,
}

#[derive(Serialize)]
pub struct CurrentValues {
    pub t: u64,
    pub gpu_util: Option<u32>,
    pub mem_copy_util: Option<u32>,
    pub fb_used_mib: Option<f64>,
    pub fb_free_mib: Option<f64>,
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

#[derive(Serialize)]
pub struct MigView {
    /// `None` where the GPU has no MIG support.
    pub enabled: Option<bool>,
    pub pending: Option<bool>,
    pub instances: Vec<MigInstanceView>,
}

#[derive(Serialize)]
pub struct MigInstanceView {
    pub index: u32,
    pub uuid: String,
    pub gpu_instance_id: Option<u32>,
    pub fb_used_mib: Option<f64>,
    pub fb_total_mib: Option<f64>,
}

#[derive(Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub name: Option<String>,
    pub used_memory_mib: Option<f64>,
    /// This agentbox process (its engine).
    pub agentbox: bool,
}

#[derive(Serialize)]
pub struct EngineView {
    /// Where the engine runs its models.
    pub device: &'static str,
    pub models: Vec<EngineModelView>,
}

#[derive(Serialize)]
pub struct EngineModelView {
    pub name: String,
    pub device: &'static str,
    pub kv_cache_usage: f64,
    pub kv_cache_tokens: usize,
    pub running: usize,
    pub waiting: usize,
}

pub async fn status(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> AppResult<Json<GpuStatus>> {
    let recent = match query.get("recent") {
        None => DEFAULT_RECENT,
        Some(text) => text.parse::<usize>().map_err(|_| {
            AppError::bad_request(
                "recent",
                format!("recent: {text:?} is not a count of samples"),
            )
        })?,
    };
    let engine = engine_view(state.models.get().map(AsRef::as_ref));
    Ok(Json(state.gpu.status_view(recent, engine)))
}

fn engine_view(models: Option<&ModelRegistry>) -> EngineView {
    let mut views: Vec<EngineModelView> = models
        .into_iter()
        .flat_map(ModelRegistry::chat_models)
        .map(|(name, model)| {
            let stats = model.stats();
            EngineModelView {
                name: name.clone(),
                device: "cpu",
                kv_cache_usage: stats.used_blocks as f64 / stats.total_blocks.max(1) as f64,
                kv_cache_tokens: model.kv_capacity().tokens,
                running: stats.running,
                waiting: stats.waiting,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    EngineView {
        device: "cpu",
        models: views,
    }
}

impl GpuMonitor {
    fn status_view(&self, recent: usize, engine: EngineView) -> GpuStatus {
        let sample_interval_ms = self.sample_interval.as_millis() as u64;
        let own_pid = std::process::id();
        match &*self.status.read() {
            Status::Unavailable { reason } => GpuStatus {
                available: false,
                reason: Some(reason.clone()),
                driver_version: None,
                cuda_driver_version: None,
                sample_interval_ms,
                monitor: None,
                gpus: Vec::new(),
                engine,
            },
            Status::Available(live) => GpuStatus {
                available: true,
                reason: None,
                driver_version: live.driver_version.clone(),
                cuda_driver_version: live.cuda_driver_version.clone(),
                sample_interval_ms,
                monitor: Some(MonitorCost {
                    samples: live.samples,
                    cpu_seconds: live.cpu_seconds,
                }),
                gpus: live
                    .gpus
                    .iter()
                    .zip(&live.recent)
                    .map(|(gpu, ring)| GpuView {
                        index: gpu.index,
                        uuid: gpu.uuid.clone(),
                        name: gpu.name.clone(),
                        pci_bus_id: gpu.pci_bus_id.clone(),
                        device: gpu.device_label(),
                        current: ring.latest().map(current_values),
                        mig: mig_view(ring.latest()),
                        processes: ring
                            .latest()
                            .map(|r| process_views(r, own_pid))
                            .unwrap_or_default(),
                        // The engine runs on the CPU until the CUDA backend lands.
                        models: Vec::new(),
                        recent: recent_points(ring, recent),
                    })
                    .collect(),
                engine,
            },
        }
    }
}

fn recent_points(ring: &Ring<DeviceReading>, count: usize) -> Vec<HistoryPoint> {
    let all: Vec<&DeviceReading> = ring.iter().collect();
    let skip = all.len().saturating_sub(count);
    all[skip..]
        .iter()
        .map(|r| HistoryPoint::from_reading(r))
        .collect()
}

fn current_values(r: &DeviceReading) -> CurrentValues {
    CurrentValues {
        t: r.timestamp_ms,
        gpu_util: r.gpu_util(),
        mem_copy_util: r.mem_copy_util(),
        fb_used_mib: r.fb_used_mib(),
        fb_free_mib: r.fb_free_mib(),
        fb_total_mib: r.fb_total_mib(),
        temperature_c: r.temperature_c,
        power_w: r.power_w(),
        energy_mj: r.energy_mj,
        sm_clock_mhz: r.sm_clock_mhz,
        mem_clock_mhz: r.mem_clock_mhz,
        pcie_tx_kbps: r.pcie_tx_kbps,
        pcie_rx_kbps: r.pcie_rx_kbps,
        last_xid: r.last_xid,
    }
}

fn mig_view(reading: Option<&DeviceReading>) -> MigView {
    let mode = reading.and_then(|r| r.mig_mode.as_ref());
    MigView {
        enabled: mode.map(|m| m.current == 1),
        pending: mode.map(|m| m.pending == 1),
        instances: reading
            .map(|r| {
                r.mig_instances
                    .iter()
                    .map(|m| MigInstanceView {
                        index: m.index,
                        uuid: m.uuid.clone(),
                        gpu_instance_id: m.gpu_instance_id,
                        fb_used_mib: m.memory.as_ref().map(|mem| mem.used as f64 / MIB),
                        fb_total_mib: m.memory.as_ref().map(|mem| mem.total as f64 / MIB),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn process_views(reading: &DeviceReading, own_pid: u32) -> Vec<ProcessView> {
    reading
        .processes
        .iter()
        .map(|p| ProcessView {
            pid: p.info.pid,
            name: p.name.clone(),
            used_memory_mib: match p.info.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) => Some(bytes as f64 / MIB),
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
            },
            agentbox: p.info.pid == own_pid,
        })
        .collect()
}

#[derive(Serialize)]
pub struct GpuHistory {
    pub bucket_secs: u64,
    pub hours: u64,
    pub gpus: Vec<GpuHistorySeries>,
}

#[derive(Serialize)]
pub struct GpuHistorySeries {
    pub uuid: String,
    /// NVML index and name, for GPUs present now.
    pub index: Option<u32>,
    pub name: Option<String>,
    pub points: Vec<HistoryPoint>,
}

pub async fn history(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> AppResult<Json<GpuHistory>> {
    let hours = match query.get("hours") {
        None => 24,
        Some(text) => match text.parse::<u64>() {
            Ok(h) if (1..=MAX_HISTORY_HOURS).contains(&h) => h,
            _ => {
                return Err(AppError::bad_request(
                    "hours",
                    format!("hours: {text:?} must be a whole number from 1 to {MAX_HISTORY_HOURS}"),
                ));
            }
        },
    };
    let since = super::nvml::now_ms().saturating_sub(hours * 3_600_000);
    let rows = state.store.gpu_history(since).await?;
    let known = state.gpu.identities();
    let mut series: Vec<GpuHistorySeries> = Vec::new();
    for (uuid, point) in rows {
        match series.last_mut() {
            Some(last) if last.uuid == uuid => last.points.push(point),
            _ => {
                let gpu = known.iter().find(|g| g.uuid == uuid);
                series.push(GpuHistorySeries {
                    index: gpu.map(|g| g.index),
                    name: gpu.map(|g| g.name.clone()),
                    uuid,
                    points: vec![point],
                });
            }
        }
    }
    series.sort_by_key(|s| s.index.unwrap_or(u32::MAX));
    Ok(Json(GpuHistory {
        bucket_secs: state.gpu.history_bucket_secs,
        hours,
        gpus: series,
    }))
}
