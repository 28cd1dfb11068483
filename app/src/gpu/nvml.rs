//! Reading GPUs through NVML: loading the driver's library at run time (so the binary runs
//! where there is none), listing the GPUs, and taking one `DeviceReading` per GPU per tick.
//! XID errors arrive as NVML events, drained without blocking at each tick.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml, bitmasks::event::EventTypes};
use nvml_wrapper_sys::bindings::{NvmlLib, nvmlDevice_t, nvmlReturn_enum_NVML_SUCCESS};

use super::reading::{DeviceReading, GpuIdentity, GpuProcess, MigInstance};

/// The names the driver's NVML library goes by; the `.so.1` is the one drivers install.
const DEFAULT_LIBRARIES: &[&str] = &["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// Loads NVML (from `library` when given) and initialises it, or says why not.
pub fn open(library: Option<&Path>) -> Result<Nvml, String> {
    let candidates: Vec<&OsStr> = match library {
        Some(path) => vec![path.as_os_str()],
        None => DEFAULT_LIBRARIES.iter().map(OsStr::new).collect(),
    };
    let mut last_error = String::new();
    for candidate in candidates {
        match Nvml::builder().lib_path(candidate).init() {
            Ok(nvml) => return Ok(nvml),
            // The error for the first name is the telling one.
            Err(NvmlError::LibloadingError(error)) if last_error.is_empty() => {
                last_error = format!(
                    "the NVIDIA driver's NVML library could not be loaded ({}: {error}); is the NVIDIA driver installed?",
                    candidate.to_string_lossy()
                );
            }
            Err(NvmlError::LibloadingError(_)) => {}
            Err(NvmlError::DriverNotLoaded) => {
                return Err("NVML loaded, but the NVIDIA kernel driver is not running".into());
            }
            Err(NvmlError::NoPermission) => {
                return Err("NVML refused access to the GPUs (no permission)".into());
            }
            Err(error) => return Err(format!("NVML failed to initialise: {error}")),
        }
    }
    Err(last_error)
}

/// Reads every GPU NVML lists. Borrows the `Nvml` handle for its devices' lifetimes.
pub struct Sampler<'n> {
    nvml: &'n Nvml,
    devices: Vec<Device<'n>>,
    pub gpus: Vec<GpuIdentity>,
    xid_events: Option<EventSet<'n>>,
    last_xid: Vec<Option<u64>>,
    /// Raw NVML entry points for MIG devices, which nvml-wrapper does not wrap; loaded the
    /// first time a GPU is seen in MIG mode.
    mig_lib: Option<Result<NvmlLib, String>>,
    library: Option<std::path::PathBuf>,
    /// (GPU, field) pairs already logged as failing, so a failure is logged once.
    logged_failures: HashSet<(usize, &'static str)>,
    /// Costly fields are read every `slow_every` ticks and carried in between.
    slow_every: u64,
    ticks: u64,
    slow: Vec<SlowFields>,
}

/// Fields that change rarely but cost much to read: on an H100, NVML's energy counter
/// takes ~4 ms of CPU per call, more than every other field together.
#[derive(Default, Clone)]
struct SlowFields {
    energy_mj: Option<u64>,
    mig_mode: Option<nvml_wrapper::structs::device::MigMode>,
}

impl<'n> Sampler<'n> {
    pub fn new(nvml: &'n Nvml, library: Option<&Path>) -> Result<Self, String> {
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML could not count the GPUs: {e}"))?;
        if count == 0 {
            return Err("the NVIDIA driver is loaded, but it reports no GPUs".into());
        }
        let mut devices = Vec::with_capacity(count as usize);
        let mut gpus = Vec::with_capacity(count as usize);
        for index in 0..count {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| format!("NVML could not open GPU {index}: {e}"))?;
            gpus.push(GpuIdentity {
                index,
                uuid: device
                    .uuid()
                    .unwrap_or_else(|_| format!("GPU-unknown-{index}")),
                name: device.name().unwrap_or_else(|_| "unknown".into()),
                pci_bus_id: device.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                minor_number: device.minor_number().ok(),
            });
            devices.push(device);
        }
        let mut sampler = Self {
            nvml,
            devices,
            gpus,
            xid_events: None,
            last_xid: vec![None; count as usize],
            mig_lib: None,
            library: library.map(Path::to_path_buf),
            logged_failures: HashSet::new(),
            slow_every: 1,
            ticks: 0,
            slow: vec![SlowFields::default(); count as usize],
        };
        sampler.register_xid_events();
        Ok(sampler)
    }

    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    /// CUDA's version as "major.minor", from NVML's integer (e.g. 13000 is "13.0").
    pub fn cuda_driver_version(&self) -> Option<String> {
        let version = self.nvml.sys_cuda_driver_version().ok()?;
        Some(format!("{}.{}", version / 1000, (version % 1000) / 10))
    }

    fn register_xid_events(&mut self) {
        let mut set = match self.nvml.create_event_set() {
            Ok(set) => set,
            Err(error) => {
                tracing::info!(%error, "GPU monitor: XID error events are not available");
                return;
            }
        };
        for (i, device) in self.devices.iter().enumerate() {
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(returned) => {
                    set = returned;
                    self.last_xid[i] = Some(0);
                }
                Err(error) => {
                    tracing::info!(gpu = i, error = %error.error, "GPU monitor: XID error events are not available for this GPU");
                    // A failed registration consumes the set; start a new one for the rest.
                    match self.nvml.create_event_set() {
                        Ok(fresh) => set = fresh,
                        Err(_) => return,
                    }
                }
            }
        }
        self.xid_events = Some(set);
    }

    /// Reads the energy counter and MIG mode only every `ticks` samples (1: every time).
    pub fn read_slow_fields_every(&mut self, ticks: u64) {
        self.slow_every = ticks.max(1);
    }

    /// Takes one reading of every GPU, in NVML index order.
    pub fn sample(&mut self) -> Vec<DeviceReading> {
        self.drain_xid_events();
        let read_slow = self.ticks.is_multiple_of(self.slow_every);
        self.ticks += 1;
        (0..self.devices.len())
            .map(|i| self.read(i, read_slow))
            .collect()
    }

    fn drain_xid_events(&mut self) {
        let Some(events) = &self.xid_events else {
            return;
        };
        // A zero timeout returns at once with `Timeout` when no event is pending.
        while let Ok(event) = events.wait(0) {
            let Ok(uuid) = event.device.uuid() else {
                continue;
            };
            let xid = match event.event_data {
                Some(XidError::Value(xid)) => xid,
                Some(XidError::Unknown) => 999,
                None => continue,
            };
            if let Some(i) = self.gpus.iter().position(|g| g.uuid == uuid) {
                tracing::warn!(gpu = i, xid, "GPU reported a critical XID error");
                self.last_xid[i] = Some(xid);
            }
        }
    }

    fn read(&mut self, i: usize, read_slow: bool) -> DeviceReading {
        let timestamp_ms = now_ms();
        let device = &self.devices[i];
        let mut failures: Vec<(&'static str, NvmlError)> = Vec::new();
        let utilization = keep(&mut failures, "utilization", device.utilization_rates());
        let memory = keep(&mut failures, "memory", device.memory_info());
        let temperature_c = keep(
            &mut failures,
            "temperature",
            device.temperature(TemperatureSensor::Gpu),
        );
        let power_mw = keep(&mut failures, "power", device.power_usage());
        let sm_clock_mhz = keep(&mut failures, "sm_clock", device.clock_info(Clock::SM));
        let mem_clock_mhz = keep(&mut failures, "mem_clock", device.clock_info(Clock::Memory));
        let pcie_tx_kbps = keep(
            &mut failures,
            "pcie_tx",
            device.pcie_throughput(PcieUtilCounter::Send),
        );
        let pcie_rx_kbps = keep(
            &mut failures,
            "pcie_rx",
            device.pcie_throughput(PcieUtilCounter::Receive),
        );
        if read_slow {
            self.slow[i] = SlowFields {
                energy_mj: keep(&mut failures, "energy", device.total_energy_consumption()),
                mig_mode: keep(&mut failures, "mig_mode", device.mig_mode()),
            };
        }
        let SlowFields {
            energy_mj,
            mig_mode,
        } = self.slow[i].clone();
        let compute = keep(
            &mut failures,
            "processes",
            device.running_compute_processes(),
        )
        .unwrap_or_default();
        let graphics = keep(
            &mut failures,
            "processes",
            device.running_graphics_processes(),
        )
        .unwrap_or_default();
        let mut processes: Vec<GpuProcess> = Vec::with_capacity(compute.len());
        for info in compute.into_iter().chain(graphics) {
            if processes.iter().any(|p| p.info.pid == info.pid) {
                continue;
            }
            let name = process_name(info.pid);
            processes.push(GpuProcess { info, name });
        }
        let mig_enabled = mig_mode.as_ref().is_some_and(|m| m.current == 1);
        for (field, error) in failures {
            self.log_failure(i, field, &error);
        }
        let mig_instances = if mig_enabled {
            self.mig_instances(i)
        } else {
            Vec::new()
        };
        DeviceReading {
            timestamp_ms,
            utilization,
            memory,
            temperature_c,
            power_mw,
            energy_mj,
            sm_clock_mhz,
            mem_clock_mhz,
            pcie_tx_kbps,
            pcie_rx_kbps,
            last_xid: self.last_xid[i],
            mig_mode,
            mig_instances,
            processes,
        }
    }

    fn log_failure(&mut self, gpu: usize, field: &'static str, error: &NvmlError) {
        if !self.logged_failures.insert((gpu, field)) {
            return;
        }
        match error {
            NvmlError::NotSupported => {
                tracing::debug!(gpu, field, "GPU monitor: not supported on this GPU");
            }
            error => tracing::warn!(gpu, field, %error, "GPU monitor: reading failed"),
        }
    }

    /// The MIG devices of GPU `i`, through NVML's raw entry points.
    fn mig_instances(&mut self, i: usize) -> Vec<MigInstance> {
        let library = self.library.clone();
        let lib = self.mig_lib.get_or_insert_with(|| {
            let path = library
                .as_deref()
                .map_or_else(|| OsStr::new(DEFAULT_LIBRARIES[0]), Path::as_os_str);
            // SAFETY: loads the same NVML library `Nvml` already holds and initialised;
            // only its MIG lookups are called.
            unsafe { NvmlLib::new(path) }.map_err(|e| e.to_string())
        });
        let lib = match lib {
            Ok(lib) => lib,
            Err(error) => {
                let error = error.clone();
                if self.logged_failures.insert((i, "mig_instances")) {
                    tracing::warn!(gpu = i, %error, "GPU monitor: cannot list MIG instances");
                }
                return Vec::new();
            }
        };
        let parent = &self.devices[i];
        // SAFETY: the handle stays valid while `self.nvml` is initialised.
        let parent_handle = unsafe { parent.handle() };
        let Some(max) = mig_call(
            lib.nvmlDeviceGetMaxMigDeviceCount.as_ref().ok(),
            |f, out| {
                // SAFETY: a valid device handle and a pointer to a local.
                unsafe { f(parent_handle, out) }
            },
        ) else {
            return Vec::new();
        };
        let mut instances = Vec::new();
        for index in 0..max {
            let mut handle: nvmlDevice_t = std::ptr::null_mut();
            let Ok(get) = lib.nvmlDeviceGetMigDeviceHandleByIndex.as_ref() else {
                break;
            };
            // SAFETY: a valid parent handle, an index below NVML's maximum, and a pointer
            // to a local; slots with no MIG device return an error and are skipped.
            if unsafe { get(parent_handle, index, &mut handle) } != nvmlReturn_enum_NVML_SUCCESS {
                continue;
            }
            // SAFETY: NVML returned this MIG device handle for the initialised library.
            let mig = unsafe { Device::new(handle, self.nvml) };
            let gpu_instance_id =
                mig_call(lib.nvmlDeviceGetGpuInstanceId.as_ref().ok(), |f, out| {
                    // SAFETY: a MIG device handle and a pointer to a local.
                    unsafe { f(handle, out) }
                });
            instances.push(MigInstance {
                index,
                uuid: mig.uuid().unwrap_or_default(),
                gpu_instance_id,
                memory: mig.memory_info().ok(),
            });
        }
        instances
    }
}

/// The value, or `None` with the failure noted for logging.
fn keep<T>(
    failures: &mut Vec<(&'static str, NvmlError)>,
    field: &'static str,
    result: Result<T, NvmlError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            failures.push((field, error));
            None
        }
    }
}

/// Calls an NVML getter that writes one `c_uint`, returning it on success.
fn mig_call<F>(
    function: Option<&F>,
    call: impl FnOnce(&F, *mut std::os::raw::c_uint) -> u32,
) -> Option<u32> {
    let function = function?;
    let mut out: std::os::raw::c_uint = 0;
    (call(function, &mut out) == nvmlReturn_enum_NVML_SUCCESS).then_some(out)
}

fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_string())
        .filter(|name| !name.is_empty())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
