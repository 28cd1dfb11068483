//! The Prometheus text for GPUs under the DCGM exporter's metric names and labels, so that
//! Grafana dashboards built for DCGM read agentbox's `/metrics` unchanged. Units follow
//! DCGM: MiB for framebuffer memory, W for power, mJ for energy, MHz for clocks.

use std::fmt::Write;

use super::reading::{DeviceReading, GpuIdentity, MIB};

/// Labels that are the same for every GPU of this host.
#[derive(Debug, Clone, Default)]
pub struct HostLabels {
    pub hostname: String,
    /// From the Kubernetes downward API, when running in a pod.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
}

/// One metric family: its name, help text, type, and how to read it from a sample.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: fn(&DeviceReading) -> Option<f64>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "DCGM_FI_DEV_GPU_UTIL",
        help: "GPU utilization (in %).",
        kind: "gauge",
        value: |r| r.gpu_util().map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        help: "Memory utilization (in %).",
        kind: "gauge",
        value: |r| r.mem_copy_util().map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_FB_USED",
        help: "Framebuffer memory used (in MiB).",
        kind: "gauge",
        value: |r| r.memory.as_ref().map(|m| whole_mib(m.used)),
    },
    Family {
        name: "DCGM_FI_DEV_FB_FREE",
        help: "Framebuffer memory free (in MiB).",
        kind: "gauge",
        value: |r| r.memory.as_ref().map(|m| whole_mib(m.free)),
    },
    Family {
        name: "DCGM_FI_DEV_GPU_TEMP",
        help: "GPU temperature (in C).",
        kind: "gauge",
        value: |r| r.temperature_c.map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_POWER_USAGE",
        help: "Power draw (in W).",
        kind: "gauge",
        value: DeviceReading::power_w,
    },
    Family {
        name: "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        help: "Total energy consumption since boot (in mJ).",
        kind: "counter",
        value: |r| r.energy_mj.map(|mj| mj as f64),
    },
    Family {
        name: "DCGM_FI_DEV_SM_CLOCK",
        help: "SM clock frequency (in MHz).",
        kind: "gauge",
        value: |r| r.sm_clock_mhz.map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_MEM_CLOCK",
        help: "Memory clock frequency (in MHz).",
        kind: "gauge",
        value: |r| r.mem_clock_mhz.map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
        help: "PCIe transmit throughput (in KB/s).",
        kind: "gauge",
        value: |r| r.pcie_tx_kbps.map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
        help: "PCIe receive throughput (in KB/s).",
        kind: "gauge",
        value: |r| r.pcie_rx_kbps.map(f64::from),
    },
    Family {
        name: "DCGM_FI_DEV_XID_ERRORS",
        help: "Value of the last XID error encountered.",
        kind: "gauge",
        value: |r| r.last_xid.map(|x| x as f64),
    },
];

/// Framebuffer sizes in whole MiB, rounded up, as nvidia-smi prints them (checked on an
/// H100: 9202.8 MiB used and 71876.2 MiB free show as 9203 and 71877).
fn whole_mib(bytes: u64) -> f64 {
    (bytes as f64 / MIB).ceil()
}

/// `agentbox_gpu_available 0`: all that `/metrics` says about GPUs when there are none.
pub fn render_unavailable(out: &mut String) {
    availability(out, false);
}

fn availability(out: &mut String, available: bool) {
    out.push_str(
        "# HELP agentbox_gpu_available Whether NVML found GPUs to monitor (1) or not (0).\n",
    );
    out.push_str("# TYPE agentbox_gpu_available gauge\n");
    let _ = writeln!(out, "agentbox_gpu_available {}", u8::from(available));
}

/// Every GPU's latest sample, under DCGM's names; fields a GPU does not support are left
/// out, as the DCGM exporter does. `own_pid` marks agentbox's own processes.
pub fn render(
    out: &mut String,
    gpus: &[GpuIdentity],
    readings: &[Option<&DeviceReading>],
    host: &HostLabels,
    own_pid: u32,
) {
    availability(out, true);
    let labels: Vec<String> = gpus.iter().map(|gpu| gpu_labels(gpu, host)).collect();
    for family in FAMILIES {
        let mut header_written = false;
        for (gpu, reading) in readings.iter().enumerate() {
            let Some(value) = reading.and_then(|r| (family.value)(r)) else {
                continue;
            };
            if !header_written {
                header(out, family.name, family.help, family.kind);
                header_written = true;
            }
            let _ = writeln!(out, "{}{{{}}} {}", family.name, labels[gpu], number(value));
        }
    }
    render_mig(out, readings, &labels);
    render_processes(out, readings, &labels, own_pid);
}

fn render_mig(out: &mut String, readings: &[Option<&DeviceReading>], labels: &[String]) {
    let modes: Vec<(usize, bool)> = readings
        .iter()
        .enumerate()
        .filter_map(|(gpu, r)| Some((gpu, r.and_then(|r| r.mig_enabled())?)))
        .collect();
    if !modes.is_empty() {
        header(
            out,
            "agentbox_gpu_mig_mode",
            "Whether MIG mode is on (1) or off (0).",
            "gauge",
        );
        for (gpu, enabled) in modes {
            let _ = writeln!(
                out,
                "agentbox_gpu_mig_mode{{{}}} {}",
                labels[gpu],
                u8::from(enabled)
            );
        }
    }
    let instances: Vec<(usize, &super::reading::MigInstance)> = readings
        .iter()
        .enumerate()
        .flat_map(|(gpu, r)| {
            r.iter()
                .flat_map(move |r| r.mig_instances.iter().map(move |m| (gpu, m)))
        })
        .collect();
    if instances.is_empty() {
        return;
    }
    header(
        out,
        "agentbox_gpu_mig_fb_used_mib",
        "Framebuffer memory used by a MIG instance (in MiB).",
        "gauge",
    );
    for (gpu, instance) in &instances {
        if let Some(memory) = &instance.memory {
            let _ = writeln!(
                out,
                "agentbox_gpu_mig_fb_used_mib{{{},GPU_I_ID=\"{}\",MIG_UUID=\"{}\"}} {}",
                labels[*gpu],
                instance
                    .gpu_instance_id
                    .map_or(String::new(), |id| id.to_string()),
                escape(&instance.uuid),
                number(whole_mib(memory.used))
            );
        }
    }
}

fn render_processes(
    out: &mut String,
    readings: &[Option<&DeviceReading>],
    labels: &[String],
    own_pid: u32,
) {
    let mut header_written = false;
    for (gpu, reading) in readings.iter().enumerate() {
        let Some(reading) = reading else { continue };
        for process in &reading.processes {
            let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) =
                process.info.used_gpu_memory
            else {
                continue;
            };
            if !header_written {
                header(
                    out,
                    "agentbox_gpu_process_memory_used_bytes",
                    "GPU memory held by a process; owner=\"agentbox\" marks this server's engine.",
                    "gauge",
                );
                header_written = true;
            }
            let owner = if process.info.pid == own_pid {
                "agentbox"
            } else {
                "other"
            };
            let _ = writeln!(
                out,
                "agentbox_gpu_process_memory_used_bytes{{{},pid=\"{}\",process=\"{}\",owner=\"{owner}\"}} {bytes}",
                labels[gpu],
                process.info.pid,
                escape(process.name.as_deref().unwrap_or("")),
            );
        }
    }
}

/// The monitor's own cost: samples taken and the CPU time its thread used.
pub fn render_monitor(out: &mut String, samples: u64, cpu_seconds: f64) {
    header(
        out,
        "agentbox_gpu_monitor_samples_total",
        "GPU samples taken by the monitor.",
        "counter",
    );
    let _ = writeln!(out, "agentbox_gpu_monitor_samples_total {samples}");
    header(
        out,
        "agentbox_gpu_monitor_cpu_seconds_total",
        "CPU time used by the GPU monitor's thread, NVML calls included.",
        "counter",
    );
    let _ = writeln!(out, "agentbox_gpu_monitor_cpu_seconds_total {cpu_seconds}");
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The DCGM exporter's label set for one GPU, in its order.
fn gpu_labels(gpu: &GpuIdentity, host: &HostLabels) -> String {
    let mut labels = format!(
        "gpu=\"{}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"{}\",modelName=\"{}\",Hostname=\"{}\"",
        gpu.index,
        escape(&gpu.uuid),
        escape(&gpu.pci_bus_id),
        gpu.device_label(),
        escape(&gpu.name),
        escape(&host.hostname),
    );
    for (name, value) in [
        ("container", &host.container),
        ("namespace", &host.namespace),
        ("pod", &host.pod),
    ] {
        if let Some(value) = value {
            let _ = write!(labels, ",{name}=\"{}\"", escape(value));
        }
    }
    labels
}

/// Whole numbers without a fraction, others as Rust prints them (shortest round-trip).
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
