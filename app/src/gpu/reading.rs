//! What the monitor reads from NVML, kept in nvml-wrapper's own types (serde-able), so that
//! samples recorded on a real GPU (`agentbox gpu --samples N`) replay exactly in tests.
//! A field NVML refuses for a device (`NotSupported`, say) is `None`, never a made-up zero.

use nvml_wrapper::struct_wrappers::device::{MemoryInfo, ProcessInfo, Utilization};
use nvml_wrapper::structs::device::MigMode;
use serde::{Deserialize, Serialize};

/// What stays fixed about one GPU while the process runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuIdentity {
    /// NVML's index, which DCGM reports as the `gpu` label.
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    /// The `N` of `/dev/nvidiaN`; DCGM's `device` label is `nvidiaN`.
    pub minor_number: Option<u32>,
}

impl GpuIdentity {
    pub fn device_label(&self) -> String {
        match self.minor_number {
            Some(minor) => format!("nvidia{minor}"),
            None => format!("nvidia{}", self.index),
        }
    }
}

/// One sample of one GPU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceReading {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub utilization: Option<Utilization>,
    pub memory: Option<MemoryInfo>,
    pub temperature_c: Option<u32>,
    /// NVML reports milliwatts.
    pub power_mw: Option<u32>,
    /// Millijoules since the driver was loaded.
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    /// KB/s over NVML's 20 ms window.
    pub pcie_tx_kbps: Option<u32>,
    pub pcie_rx_kbps: Option<u32>,
    /// The last critical XID error seen since the monitor started (0: none); `None` where
    /// the device does not deliver XID events.
    pub last_xid: Option<u64>,
    pub mig_mode: Option<MigMode>,
    pub mig_instances: Vec<MigInstance>,
    pub processes: Vec<GpuProcess>,
}

/// One MIG device (a GPU instance's slice) of a GPU in MIG mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigInstance {
    pub index: u32,
    pub uuid: String,
    pub gpu_instance_id: Option<u32>,
    pub memory: Option<MemoryInfo>,
}

/// A process holding GPU memory, as NVML lists it, with its name from `/proc`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuProcess {
    pub info: ProcessInfo,
    pub name: Option<String>,
}

/// What `agentbox gpu --samples N` writes: the GPUs and their samples in time order. The
/// CI tests render metrics and history from a file of this shape recorded on an H100.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuIdentity>,
    /// `samples[t][g]` is GPU `g`'s reading at tick `t`.
    pub samples: Vec<Vec<DeviceReading>>,
}

pub const MIB: f64 = 1024.0 * 1024.0;

impl DeviceReading {
    pub fn fb_used_mib(&self) -> Option<f64> {
        self.memory.as_ref().map(|m| m.used as f64 / MIB)
    }

    pub fn fb_free_mib(&self) -> Option<f64> {
        self.memory.as_ref().map(|m| m.free as f64 / MIB)
    }

    pub fn fb_total_mib(&self) -> Option<f64> {
        self.memory.as_ref().map(|m| m.total as f64 / MIB)
    }

    pub fn power_w(&self) -> Option<f64> {
        self.power_mw.map(|mw| f64::from(mw) / 1000.0)
    }

    pub fn gpu_util(&self) -> Option<u32> {
        self.utilization.as_ref().map(|u| u.gpu)
    }

    pub fn mem_copy_util(&self) -> Option<u32> {
        self.utilization.as_ref().map(|u| u.memory)
    }

    pub fn mig_enabled(&self) -> Option<bool> {
        self.mig_mode.as_ref().map(|m| m.current == 1)
    }
}
