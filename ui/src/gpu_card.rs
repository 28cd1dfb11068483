//! One GPU's card on the GPUs page: identity, current readings, live or 24 h charts,
//! the processes holding memory on it and the models the engine runs there.

use leptos::prelude::*;

use crate::charts::{ChartData, LineChart, YScale};
use crate::gpu_api::{ChartPoint, CurrentValues, Gpu, GpuProcess, Mig, RECENT_POINTS};
use crate::gpu_page::{ChartRange, GpuPageState, HISTORY_HOURS};

const MIB_PER_GIB: f64 = 1024.0;
/// Points further apart than this many sampling intervals are drawn as a gap.
const GAP_INTERVALS: u64 = 3;

#[derive(Clone, Copy)]
enum Metric {
    Utilization,
    MemoryUsed,
    Power,
    Temperature,
}

impl Metric {
    fn value(self, point: &ChartPoint) -> Option<f64> {
        match self {
            Metric::Utilization => point.gpu_util,
            Metric::MemoryUsed => point.fb_used_mib.map(|mib| mib / MIB_PER_GIB),
            Metric::Power => point.power_w,
            Metric::Temperature => point.temperature_c,
        }
    }

    fn y_scale(self, gpu: &Gpu) -> YScale {
        match self {
            Metric::Utilization => YScale::Fixed(100.0),
            Metric::MemoryUsed => gpu
                .current
                .as_ref()
                .and_then(|current| current.fb_total_mib)
                .map(|mib| YScale::Fixed(mib / MIB_PER_GIB))
                .unwrap_or(YScale::Auto { at_least: 1.0 }),
            Metric::Power => YScale::Auto { at_least: 50.0 },
            Metric::Temperature => YScale::Auto { at_least: 100.0 },
        }
    }
}

#[component]
pub fn GpuCard(page: GpuPageState, uuid: String) -> impl IntoView {
    let gpu = Memo::new({
        let uuid = uuid.clone();
        move |_| {
            page.status.with(|status| {
                status
                    .as_ref()
                    .and_then(|status| status.gpus.iter().find(|gpu| gpu.uuid == uuid).cloned())
            })
        }
    });
    let versions = move || {
        page.status.with(|status| {
            let status = status.as_ref()?;
            let driver = status.driver_version.as_deref().unwrap_or("—");
            let cuda = status.cuda_driver_version.as_deref().unwrap_or("—");
            Some(format!("Driver {driver} · CUDA {cuda}"))
        })
    };
    let field = move |read: fn(&Gpu) -> String| {
        move || gpu.with(|gpu| gpu.as_ref().map(read).unwrap_or_default())
    };
    let chart = move |metric: Metric| -> Signal<ChartData> {
        Memo::new(move |_| chart_data(page, gpu, metric)).into()
    };
    view! {
        <section class="panel gpu-card" data-testid="gpu-card">
            <header class="gpu-card-header">
                <div>
                    <h2 class="gpu-name" data-testid="gpu-name">
                        {field(|gpu| gpu.name.clone())}
                    </h2>
                    <div class="gpu-identity">
                        <span class="device-tag">{field(|gpu| format!("GPU {}", gpu.index))}</span>
                        <span>{field(|gpu| gpu.device.clone())}</span>
                        <span>{field(|gpu| gpu.pci_bus_id.clone())}</span>
                        <span>{versions}</span>
                    </div>
                    <div class="gpu-uuid" title="UUID">{uuid}</div>
                </div>
            </header>
            <div class="stat-grid">
                {move || gpu.with(|gpu| gpu.as_ref().map(stat_tiles))}
            </div>
            <div class="chart-grid">
                <LineChart title="Utilization" unit="%" decimals=0 data=chart(Metric::Utilization) />
                <LineChart title="Memory used" unit="GiB" decimals=1 data=chart(Metric::MemoryUsed) />
                <LineChart title="Power" unit="W" decimals=0 data=chart(Metric::Power) />
                <LineChart title="Temperature" unit="°C" decimals=0 data=chart(Metric::Temperature) />
            </div>
            <div class="gpu-lower">
                <div>
                    <h3 class="subsection-title">"Processes"</h3>
                    {move || gpu.with(|gpu| gpu.as_ref().map(|gpu| process_table(&gpu.processes)))}
                </div>
                <div>
                    <h3 class="subsection-title">"Models on this GPU"</h3>
                    {move || gpu.with(|gpu| gpu.as_ref().map(|gpu| model_list(&gpu.models)))}
                    {move || gpu.with(|gpu| gpu.as_ref().map(|gpu| mig_instances(&gpu.mig)))}
                </div>
            </div>
        </section>
    }
}

fn chart_data(page: GpuPageState, gpu: Memo<Option<Gpu>>, metric: Metric) -> ChartData {
    gpu.with(|gpu| {
        let Some(gpu) = gpu else {
            return ChartData::default();
        };
        let y_scale = metric.y_scale(gpu);
        let values = |points: &[ChartPoint]| -> Vec<(u64, Option<f64>)> {
            points
                .iter()
                .map(|point| (point.t, metric.value(point)))
                .collect()
        };
        match page.range.get() {
            ChartRange::Live => {
                let interval_ms = page
                    .status
                    .with(|status| status.as_ref().map_or(1000, |s| s.sample_interval_ms));
                let end_ms = gpu
                    .recent
                    .last()
                    .map_or_else(|| js_sys::Date::now() as u64, |point| point.t);
                ChartData {
                    samples: values(&gpu.recent),
                    start_ms: end_ms.saturating_sub(RECENT_POINTS * interval_ms),
                    end_ms,
                    max_gap_ms: GAP_INTERVALS * interval_ms,
                    y_scale,
                }
            }
            ChartRange::Day => page.history.with(|history| {
                let end_ms = js_sys::Date::now() as u64;
                let (samples, bucket_ms) =
                    history.as_ref().map_or((Vec::new(), 60_000), |history| {
                        let samples = history
                            .gpus
                            .iter()
                            .find(|series| series.uuid == gpu.uuid)
                            .map(|series| values(&series.points))
                            .unwrap_or_default();
                        (samples, history.bucket_secs * 1000)
                    });
                let hours = history
                    .as_ref()
                    .map_or(HISTORY_HOURS, |history| history.hours);
                ChartData {
                    samples,
                    start_ms: end_ms.saturating_sub(hours * 3_600_000),
                    end_ms,
                    max_gap_ms: GAP_INTERVALS * bucket_ms,
                    y_scale,
                }
            }),
        }
    })
}

fn stat_tiles(gpu: &Gpu) -> impl IntoView + use<> {
    let current = gpu.current.as_ref();
    let read = |pick: fn(&CurrentValues) -> Option<String>| {
        current.and_then(pick).unwrap_or_else(|| "—".to_owned())
    };
    // A missing detail is left blank rather than shown as "—".
    let detail =
        |pick: fn(&CurrentValues) -> Option<String>| current.and_then(pick).unwrap_or_default();
    let tiles = [
        (
            "Utilization",
            read(|c| c.gpu_util.map(|u| format!("{u} %"))),
            detail(|c| c.mem_copy_util.map(|u| format!("memory copy {u} %"))),
        ),
        (
            "Memory",
            read(|c| {
                Some(format!(
                    "{} / {} GiB",
                    gib(c.fb_used_mib?),
                    gib(c.fb_total_mib?)
                ))
            }),
            detail(|c| {
                let share = c.fb_used_mib? / c.fb_total_mib.filter(|total| *total > 0.0)?;
                Some(format!("{:.0} % used", share * 100.0))
            }),
        ),
        (
            "Power",
            read(|c| c.power_w.map(|w| format!("{w:.0} W"))),
            detail(|c| {
                c.energy_mj
                    .map(|mj| format!("{:.2} kWh since driver load", mj as f64 / 3.6e9))
            }),
        ),
        (
            "Temperature",
            read(|c| c.temperature_c.map(|t| format!("{t} °C"))),
            String::new(),
        ),
        (
            "SM clock",
            read(|c| c.sm_clock_mhz.map(|mhz| format!("{mhz} MHz"))),
            detail(|c| c.mem_clock_mhz.map(|mhz| format!("memory {mhz} MHz"))),
        ),
        (
            "PCIe",
            read(|c| c.pcie_tx_kbps.map(|tx| format!("↑ {} TX", throughput(tx)))),
            detail(|c| c.pcie_rx_kbps.map(|rx| format!("↓ {} RX", throughput(rx)))),
        ),
        (
            "Last XID",
            // NVML reports 0 until the driver logs an XID error.
            read(|c| {
                c.last_xid.map(|xid| match xid {
                    0 => "none".to_owned(),
                    xid => xid.to_string(),
                })
            }),
            String::new(),
        ),
        (
            "MIG",
            mig_mode(&gpu.mig),
            format!("{} instances", gpu.mig.instances.len()),
        ),
    ];
    tiles
        .into_iter()
        .map(|(label, value, detail)| {
            view! {
                <div class="stat" data-testid="gpu-stat">
                    <div class="stat-label">{label}</div>
                    <div class="stat-value">{value}</div>
                    <div class="stat-detail">{detail}</div>
                </div>
            }
        })
        .collect_view()
}

fn mig_mode(mig: &Mig) -> String {
    let mode = match mig.enabled {
        None => return "not supported".to_owned(),
        Some(true) => "enabled",
        Some(false) => "disabled",
    };
    if mig
        .pending
        .is_some_and(|pending| Some(pending) != mig.enabled)
    {
        format!("{mode} (change pending)")
    } else {
        mode.to_owned()
    }
}

fn process_table(processes: &[GpuProcess]) -> impl IntoView + use<> {
    if processes.is_empty() {
        return view! { <p class="muted">"No process holds memory on this GPU."</p> }.into_any();
    }
    let rows = processes
        .iter()
        .map(|process| {
            let memory = process
                .used_memory_mib
                .map_or_else(|| "—".to_owned(), |mib| format!("{} GiB", gib(mib)));
            view! {
                <tr data-testid="gpu-process">
                    <td class="num">{process.pid}</td>
                    <td>
                        {process.name.clone().unwrap_or_else(|| "—".to_owned())}
                        {process.agentbox.then(|| view! { <span class="badge">"agentbox"</span> })}
                    </td>
                    <td class="num">{memory}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="data-table compact">
            <thead>
                <tr>
                    <th class="num">"PID"</th>
                    <th>"Name"</th>
                    <th class="num">"Memory"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

fn model_list(models: &[String]) -> impl IntoView + use<> {
    if models.is_empty() {
        return view! { <p class="muted" data-testid="gpu-models">"none"</p> }.into_any();
    }
    let chips = models
        .iter()
        .map(|model| view! { <span class="chip">{model.clone()}</span> })
        .collect_view();
    view! { <div class="chips" data-testid="gpu-models">{chips}</div> }.into_any()
}

fn mig_instances(mig: &Mig) -> impl IntoView + use<> {
    if mig.instances.is_empty() {
        return None;
    }
    let rows = mig
        .instances
        .iter()
        .map(|instance| {
            let memory = match (instance.fb_used_mib, instance.fb_total_mib) {
                (Some(used), Some(total)) => format!("{} / {} GiB", gib(used), gib(total)),
                _ => "—".to_owned(),
            };
            view! {
                <tr>
                    <td class="num">{instance.index}</td>
                    <td class="gpu-uuid">{instance.uuid.clone()}</td>
                    <td class="num">{memory}</td>
                </tr>
            }
        })
        .collect_view();
    Some(view! {
        <h3 class="subsection-title">"MIG instances"</h3>
        <table class="data-table compact">
            <thead>
                <tr>
                    <th class="num">"#"</th>
                    <th>"UUID"</th>
                    <th class="num">"Memory"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    })
}

/// MiB as GiB with one decimal.
fn gib(mib: f64) -> String {
    format!("{:.1}", mib / MIB_PER_GIB)
}

/// NVML reports PCIe throughput in KB/s.
fn throughput(kilobytes_per_second: u32) -> String {
    if kilobytes_per_second >= 1000 {
        format!("{:.1} MB/s", f64::from(kilobytes_per_second) / 1000.0)
    } else {
        format!("{kilobytes_per_second} KB/s")
    }
}
