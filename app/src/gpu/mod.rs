//! The GPU monitor, in place of the DCGM exporter: a thread samples every NVIDIA GPU through
//! NVML at an interval, keeps a ring of recent readings per GPU, and writes downsampled
//! history to the store. `/metrics` and `/api/gpu` read its latest state. Without a usable
//! GPU (no driver, no device, NVML failing) it records why once and does nothing else.

pub mod api;
mod dcgm;
mod history;
mod nvml;
mod reading;

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

pub use dcgm::HostLabels;
pub use history::HistoryPoint;
pub use reading::Recording;

use self::history::{Downsampler, Ring};
use self::reading::{DeviceReading, GpuIdentity};
use crate::config::{Config, GpuConfig};
use crate::store::Store;

pub struct GpuMonitor {
    status: RwLock<Status>,
    host: HostLabels,
    sample_interval: Duration,
    history_bucket_secs: u64,
    stop: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

enum Status {
    Unavailable { reason: String },
    Available(Box<Live>),
}

struct Live {
    driver_version: Option<String>,
    cuda_driver_version: Option<String>,
    gpus: Vec<GpuIdentity>,
    recent: Vec<Ring<DeviceReading>>,
    samples: u64,
    /// CPU time the monitor's thread has used, NVML's calls included.
    cpu_seconds: f64,
}

/// What the sampling thread reports once NVML is open (or has failed to open).
type Started = Result<(Option<String>, Option<String>, Vec<GpuIdentity>), String>;

impl GpuMonitor {
    /// Starts sampling on its own thread, or records why there is nothing to sample.
    /// Never fails start-up.
    pub fn start(config: &Config, store: Store) -> Arc<Self> {
        let gpu = config.gpu.clone();
        let monitor = Arc::new(Self {
            status: RwLock::new(Status::Unavailable {
                reason: "the GPU monitor is starting".into(),
            }),
            host: host_labels(config),
            sample_interval: gpu.sample_interval,
            history_bucket_secs: gpu.history_bucket.as_secs(),
            stop: Mutex::new(None),
        });
        if !gpu.enabled {
            monitor
                .set_unavailable("GPU monitoring is disabled in the config (gpu.enabled: false)");
            return monitor;
        }
        let (started_tx, started_rx) = mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = {
            let monitor = monitor.clone();
            std::thread::Builder::new()
                .name("gpu-monitor".into())
                .spawn(move || sample_loop(&monitor, &gpu, &store, &started_tx, &stop_rx))
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                monitor
                    .set_unavailable(&format!("could not start the GPU monitor thread: {error}"));
                return monitor;
            }
        };
        // NVML answers in milliseconds; waiting here makes the first scrape already right.
        match started_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok((driver, cuda, gpus))) => {
                tracing::info!(
                    gpus = ?gpus.iter().map(|g| format!("{} {} ({})", g.index, g.name, g.uuid)).collect::<Vec<_>>(),
                    driver = driver.as_deref().unwrap_or("?"),
                    cuda = cuda.as_deref().unwrap_or("?"),
                    "GPU monitor: sampling every {} ms",
                    monitor.sample_interval.as_millis()
                );
            }
            Ok(Err(reason)) => {
                tracing::info!("GPU monitor: no GPU ({reason}); running without GPU metrics");
            }
            Err(_) => tracing::warn!("GPU monitor: NVML did not answer within 30 s"),
        }
        *monitor.stop.lock() = Some((stop_tx, thread));
        monitor
    }

    /// Stops sampling and stores the partly filled history buckets.
    pub fn shutdown(&self) {
        let Some((stop, thread)) = self.stop.lock().take() else {
            return;
        };
        let _ = stop.send(());
        let _ = thread.join();
    }

    /// The GPUs being sampled (none when unavailable).
    fn identities(&self) -> Vec<GpuIdentity> {
        match &*self.status.read() {
            Status::Available(live) => live.gpus.clone(),
            Status::Unavailable { .. } => Vec::new(),
        }
    }

    fn set_unavailable(&self, reason: &str) {
        *self.status.write() = Status::Unavailable {
            reason: reason.to_string(),
        };
    }

    /// Appends the GPU series (DCGM names) to a Prometheus text exposition.
    pub fn render_metrics(&self, out: &mut String) {
        match &*self.status.read() {
            Status::Unavailable { .. } => dcgm::render_unavailable(out),
            Status::Available(live) => {
                let latest: Vec<Option<&DeviceReading>> =
                    live.recent.iter().map(Ring::latest).collect();
                dcgm::render(out, &live.gpus, &latest, &self.host, std::process::id());
                dcgm::render_monitor(out, live.samples, live.cpu_seconds);
            }
        }
    }
}

/// How often the costly fields are read (see `nvml::Sampler::read_slow_fields_every`).
const SLOW_FIELDS_PERIOD_MS: u64 = 10_000;

/// The sampling thread: opens NVML, reports how that went, then samples until stopped.
fn sample_loop(
    monitor: &GpuMonitor,
    config: &GpuConfig,
    store: &Store,
    started: &mpsc::Sender<Started>,
    stop: &mpsc::Receiver<()>,
) {
    let library = config.nvml_library.as_deref();
    let nvml = match nvml::open(library) {
        Ok(nvml) => nvml,
        Err(reason) => {
            monitor.set_unavailable(&reason);
            let _ = started.send(Err(reason));
            return;
        }
    };
    let mut sampler = match nvml::Sampler::new(&nvml, library) {
        Ok(sampler) => sampler,
        Err(reason) => {
            monitor.set_unavailable(&reason);
            let _ = started.send(Err(reason));
            return;
        }
    };
    // The costly fields (energy, MIG mode) every 10 s: they keep the monitor under 0.3%
    // of a core at a 1 s interval.
    let interval_ms = config.sample_interval.as_millis().max(1) as u64;
    sampler.read_slow_fields_every(SLOW_FIELDS_PERIOD_MS.div_ceil(interval_ms));
    let gpus = sampler.gpus.clone();
    let driver = sampler.driver_version();
    let cuda = sampler.cuda_driver_version();
    *monitor.status.write() = Status::Available(Box::new(Live {
        driver_version: driver.clone(),
        cuda_driver_version: cuda.clone(),
        gpus: gpus.clone(),
        recent: gpus
            .iter()
            .map(|_| Ring::new(config.recent_samples))
            .collect(),
        samples: 0,
        cpu_seconds: 0.0,
    }));
    let _ = started.send(Ok((driver, cuda, gpus.clone())));

    let bucket_ms = config.history_bucket.as_millis() as u64;
    let retention_ms = config.history_retention.as_millis() as u64;
    let mut downsamplers: Vec<Downsampler> =
        gpus.iter().map(|_| Downsampler::new(bucket_ms)).collect();
    let mut store_failed = false;
    let mut store_points = |points: Vec<(String, HistoryPoint)>| {
        if points.is_empty() {
            return;
        }
        let keep_from = nvml::now_ms().saturating_sub(retention_ms);
        match store.insert_gpu_history(&points, keep_from) {
            Ok(()) => store_failed = false,
            Err(error) if !store_failed => {
                store_failed = true;
                tracing::warn!("GPU monitor: cannot store history: {error:#}");
            }
            Err(_) => {}
        }
    };
    let mut next = Instant::now();
    loop {
        let readings = sampler.sample();
        let mut finished = Vec::new();
        for ((gpu, reading), downsampler) in gpus.iter().zip(&readings).zip(&mut downsamplers) {
            if let Some(point) = downsampler.push(reading) {
                finished.push((gpu.uuid.clone(), point));
            }
        }
        if let Status::Available(live) = &mut *monitor.status.write() {
            for (ring, reading) in live.recent.iter_mut().zip(readings) {
                ring.push(reading);
            }
            live.samples += 1;
            live.cpu_seconds = thread_cpu_seconds();
        }
        store_points(finished);
        next += config.sample_interval;
        let now = Instant::now();
        if next < now {
            // Fell behind (a slow NVML call, a suspended host): skip the missed ticks.
            next = now + config.sample_interval;
        }
        match stop.recv_timeout(next - now) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let partial: Vec<(String, HistoryPoint)> = gpus
        .iter()
        .zip(&mut downsamplers)
        .filter_map(|(gpu, d)| Some((gpu.uuid.clone(), d.flush()?)))
        .collect();
    store_points(partial);
}

/// CPU time used by the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes into the timespec we own.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if status != 0 {
        return 0.0;
    }
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

fn host_labels(config: &Config) -> HostLabels {
    let k8s = &config.kubernetes;
    let hostname = k8s.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into())
    });
    HostLabels {
        hostname,
        pod: k8s.pod_name.clone(),
        namespace: k8s.namespace.clone(),
        container: k8s.container.clone(),
    }
}

/// `agentbox gpu`: takes `samples` readings `interval` apart, as JSON in the form the tests
/// replay; with no GPU, says why and fails.
pub fn record(
    library: Option<&std::path::Path>,
    samples: usize,
    interval: Duration,
) -> anyhow::Result<Recording> {
    let nvml = nvml::open(library).map_err(anyhow::Error::msg)?;
    let mut sampler = nvml::Sampler::new(&nvml, library).map_err(anyhow::Error::msg)?;
    let mut recording = Recording {
        driver_version: sampler.driver_version(),
        cuda_driver_version: sampler.cuda_driver_version(),
        gpus: sampler.gpus.clone(),
        samples: Vec::with_capacity(samples),
    };
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(interval);
        }
        recording.samples.push(sampler.sample());
    }
    Ok(recording)
}

/// Reads a recording written by `agentbox gpu`.
#[cfg(test)]
pub fn load_recording(text: &str) -> anyhow::Result<Recording> {
    anyhow::Context::context(serde_json::from_str(text), "parsing a GPU recording")
}

#[cfg(test)]
mod tests;
