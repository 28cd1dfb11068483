//! The GPUs page: a card per GPU (`gpu_card`), or a "No GPU" panel saying why, then the
//! engine's models with their KV cache and queues.
//!
//! While the page is shown it polls `/api/gpu` every two seconds, and in the 24 h view
//! `/api/gpu/history` every minute; leaving the page clears the timer. A refused API key
//! is left to the key panel; a key accepted there polls at once.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api::ApiError;
use crate::auth::KeyGate;
use crate::gpu_api::{self, EngineModel, GpuHistory, GpuStatus};
use crate::gpu_card::GpuCard;

const POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const HISTORY_HOURS: u64 = 24;
/// The history holds one-minute means: fetching it more often shows nothing new.
const HISTORY_MAX_AGE_MS: f64 = 60_000.0;

/// The span the charts show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartRange {
    /// The full-resolution points that come with each `/api/gpu` answer.
    Live,
    /// One-minute means over the last day, from `/api/gpu/history`.
    Day,
}

/// The page's signals, dropped with the page. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct GpuPageState {
    pub status: RwSignal<Option<GpuStatus>>,
    pub history: RwSignal<Option<GpuHistory>>,
    pub range: RwSignal<ChartRange>,
    status_error: RwSignal<Option<String>>,
    history_error: RwSignal<Option<String>>,
    /// At most one request of each kind in flight, however slow the server.
    status_in_flight: StoredValue<bool>,
    history_in_flight: StoredValue<bool>,
    /// `Date.now()` of the last history request.
    history_requested_at: StoredValue<f64>,
}

impl GpuPageState {
    fn new() -> Self {
        Self {
            status: RwSignal::new(None),
            history: RwSignal::new(None),
            range: RwSignal::new(ChartRange::Live),
            status_error: RwSignal::new(None),
            history_error: RwSignal::new(None),
            status_in_flight: StoredValue::new(false),
            history_in_flight: StoredValue::new(false),
            history_requested_at: StoredValue::new(f64::NEG_INFINITY),
        }
    }

    fn poll(self) {
        if self.range.get_untracked() == ChartRange::Day {
            self.refresh_history_if_stale();
        }
        if self.status_in_flight.get_value() {
            return;
        }
        self.status_in_flight.set_value(true);
        spawn_local(async move {
            let answer = gpu_api::gpu_status().await;
            // The page may be gone by now: writes to its dropped signals do nothing.
            let _ = self.status_in_flight.try_set_value(false);
            match answer {
                Ok(status) => {
                    self.status.set(Some(status));
                    self.status_error.set(None);
                }
                Err(error) => self
                    .status_error
                    .set(banner_text("Could not read the GPU status", &error)),
            }
        });
    }

    fn show_range(self, range: ChartRange) {
        self.range.set(range);
        if range == ChartRange::Day {
            self.refresh_history_if_stale();
        }
    }

    fn refresh_history_if_stale(self) {
        let now = js_sys::Date::now();
        if self.history_in_flight.get_value()
            || now - self.history_requested_at.get_value() < HISTORY_MAX_AGE_MS
        {
            return;
        }
        self.history_in_flight.set_value(true);
        self.history_requested_at.set_value(now);
        spawn_local(async move {
            let answer = gpu_api::gpu_history(HISTORY_HOURS).await;
            let _ = self.history_in_flight.try_set_value(false);
            match answer {
                Ok(history) => {
                    self.history.set(Some(history));
                    self.history_error.set(None);
                }
                Err(error) => {
                    if error.is_invalid_api_key() {
                        // Ask again as soon as a key is accepted, not a minute later.
                        let _ = self.history_requested_at.try_set_value(f64::NEG_INFINITY);
                    }
                    self.history_error
                        .set(banner_text("Could not read the GPU history", &error));
                }
            }
        });
    }
}

/// The banner for a failed read; none for a refused API key (the key panel shows it).
fn banner_text(context: &str, error: &ApiError) -> Option<String> {
    (!error.is_invalid_api_key()).then(|| format!("{context}: {error}"))
}

#[component]
pub fn GpuPage(gate: KeyGate) -> impl IntoView {
    let page = GpuPageState::new();
    // Polls now, and again whenever the key panel accepts a key.
    Effect::new(move |_| {
        gate.epoch.track();
        page.poll();
    });
    match set_interval_with_handle(move || page.poll(), POLL_INTERVAL) {
        Ok(timer) => on_cleanup(move || timer.clear()),
        Err(_) => page.status_error.set(Some(
            "The browser refused a timer: this page will not refresh.".to_owned(),
        )),
    }
    // Memos, so that each poll re-renders only what changed, not the whole page.
    let available = Memo::new(move |_| {
        page.status
            .with(|status| status.as_ref().map(|s| s.available))
    });
    let gpu_uuids = Memo::new(move |_| {
        page.status.with(|status| {
            status
                .iter()
                .flat_map(|status| status.gpus.iter().map(|gpu| gpu.uuid.clone()))
                .collect::<Vec<_>>()
        })
    });
    let errors = move || {
        [page.status_error.get(), page.history_error.get()]
            .into_iter()
            .flatten()
            .map(|message| view! { <div class="error-banner" data-testid="error-banner" role="alert">{message}</div> })
            .collect_view()
    };
    view! {
        <main class="page" data-testid="gpu-page">
            <header class="page-header">
                <h1 class="page-title">"GPUs"</h1>
                <Show when=move || available.get() == Some(true)>
                    <RangeToggle page />
                </Show>
            </header>
            <div class="page-scroll">
                <div class="page-inner">
                    {errors}
                    {move || match available.get() {
                        None => view! { <p class="page-loading">"Reading the GPUs…"</p> }.into_any(),
                        Some(false) => view! { <NoGpu page /> }.into_any(),
                        Some(true) => view! {
                            <For
                                each=move || gpu_uuids.get()
                                key=|uuid| uuid.clone()
                                children=move |uuid| view! { <GpuCard page uuid /> }
                            />
                        }
                        .into_any(),
                    }}
                    <EngineSection page />
                    <MonitorNote page />
                </div>
            </div>
        </main>
    }
}

#[component]
fn RangeToggle(page: GpuPageState) -> impl IntoView {
    let option = move |range: ChartRange, label: &'static str, test_id: &'static str| {
        let selected = move || page.range.get() == range;
        view! {
            <button
                type="button"
                class="segment"
                class:selected=selected
                aria-pressed=move || selected().to_string()
                data-testid=test_id
                on:click=move |_| page.show_range(range)
            >
                {label}
            </button>
        }
    };
    view! {
        <div class="segmented" role="group" aria-label="Chart range">
            {option(ChartRange::Live, "Live (recent)", "range-live")}
            {option(ChartRange::Day, "24 h", "range-day")}
        </div>
    }
}

#[component]
fn NoGpu(page: GpuPageState) -> impl IntoView {
    let reason = Memo::new(move |_| {
        page.status.with(|status| {
            status
                .as_ref()
                .and_then(|status| status.reason.clone())
                .unwrap_or_else(|| "The server reported no GPU.".to_owned())
        })
    });
    view! {
        <section class="panel no-gpu" data-testid="no-gpu">
            <div class="no-gpu-icon" aria-hidden="true">
                <svg viewBox="0 0 24 24">
                    <rect x="5" y="5" width="14" height="14" rx="2" />
                    <rect x="9" y="9" width="6" height="6" rx="1" />
                    <path d="M9 2v3M15 2v3M9 19v3M15 19v3M2 9h3M2 15h3M19 9h3M19 15h3" />
                </svg>
            </div>
            <div class="no-gpu-text">
                <h2>"No GPU"</h2>
                <p class="no-gpu-reason" data-testid="no-gpu-reason">{reason}</p>
                <p class="muted">
                    "Models run on the CPU. Utilization, memory, power and temperature appear here once the server sees an NVIDIA GPU."
                </p>
            </div>
        </section>
    }
}

#[component]
fn EngineSection(page: GpuPageState) -> impl IntoView {
    let engine = Memo::new(move |_| {
        page.status
            .with(|status| status.as_ref().map(|s| s.engine.clone()))
    });
    let device = move || {
        engine.with(|engine| {
            engine
                .as_ref()
                .map(|e| e.device.clone())
                .unwrap_or_default()
        })
    };
    let rows = move || {
        engine.with(|engine| {
            let models = engine
                .as_ref()
                .map(|e| e.models.as_slice())
                .unwrap_or_default();
            if models.is_empty() {
                return view! {
                    <tr>
                        <td class="empty-cell" colspan="6">"No chat model is loaded."</td>
                    </tr>
                }
                .into_any();
            }
            models
                .iter()
                .cloned()
                .map(|model| view! { <EngineRow model /> })
                .collect_view()
                .into_any()
        })
    };
    view! {
        <section class="panel" data-testid="engine">
            <div class="panel-header">
                <h2>"Engine"</h2>
                <Show when=move || engine.with(Option::is_some)>
                    <span class="muted">"Models run on "<span class="device-tag">{device}</span></span>
                </Show>
            </div>
            <table class="data-table">
                <thead>
                    <tr>
                        <th>"Model"</th>
                        <th>"Device"</th>
                        <th class="kv-column">"KV cache"</th>
                        <th class="num">"KV capacity"</th>
                        <th class="num">"Running"</th>
                        <th class="num">"Waiting"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
}

#[component]
fn EngineRow(model: EngineModel) -> impl IntoView {
    let usage_percent = (model.kv_cache_usage * 100.0).clamp(0.0, 100.0);
    view! {
        <tr data-testid="engine-model">
            <td class="model-name" data-testid="engine-model-name">{model.name}</td>
            <td>
                <span class="device-tag" data-testid="engine-model-device">{model.device}</span>
            </td>
            <td>
                <div class="usage">
                    <div class="usage-bar">
                        <div class="usage-fill" style:width=format!("{usage_percent:.1}%")></div>
                    </div>
                    <span class="usage-label">{format!("{usage_percent:.0} %")}</span>
                </div>
            </td>
            <td class="num">{format!("{} tokens", group_thousands(model.kv_cache_tokens))}</td>
            <td class="num">{model.running}</td>
            <td class="num">{model.waiting}</td>
        </tr>
    }
}

#[component]
fn MonitorNote(page: GpuPageState) -> impl IntoView {
    let note = move || {
        page.status.with(|status| {
            let status = status.as_ref()?;
            let monitor = status.monitor.as_ref()?;
            Some(format!(
                "Sampled every {} ms · the monitor has used {:.2} s of CPU over {} samples",
                status.sample_interval_ms,
                monitor.cpu_seconds,
                group_thousands(monitor.samples),
            ))
        })
    };
    view! { <p class="page-note">{note}</p> }
}

/// `65536` → `"65,536"`.
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}
