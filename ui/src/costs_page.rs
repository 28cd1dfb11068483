//! The cost and usage dashboard (`/costs`): the last 30 days (UTC, as the server counts
//! them) from `GET /api/public/metrics/daily`, as stacked bar charts of cost per day and
//! tokens per day with one colour per model, and traces per day; totals for the period
//! above them and per model in the legends.

use std::collections::HashMap;

use leptos::prelude::*;

use crate::auth::KeyGate;
use crate::bar_chart::{BarSeries, StackedBarChart, StackedBars};
use crate::trace_format::{cost, tokens};
use crate::traces_api::{self, DailyMetrics};
use crate::traces_page::load_error;

const DAYS: u64 = 30;
const MS_PER_DAY: f64 = 86_400_000.0;
/// Models beyond this many (the smallest) are drawn together as "other models".
const MAX_SERIES: usize = 8;

/// The period's days, oldest first: `(YYYY-MM-DD, "Nov 23")`.
fn period_days(now_ms: f64) -> Vec<(String, String)> {
    let today = (now_ms / MS_PER_DAY).floor();
    (0..DAYS)
        .rev()
        .map(|back| {
            let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(
                (today - back as f64) * MS_PER_DAY,
            ));
            let iso = String::from(date.to_iso_string());
            let day: String = iso.chars().take(10).collect();
            let label = String::from(
                date.to_locale_date_string(
                    "en-US",
                    &js_sys::JSON::parse(r#"{"month":"short","day":"numeric","timeZone":"UTC"}"#)
                        .unwrap_or(wasm_bindgen::JsValue::UNDEFINED),
                ),
            );
            (day, label)
        })
        .collect()
}

/// The dashboard's figures for the period.
#[derive(Clone, Debug, Default, PartialEq)]
struct Dashboard {
    cost: StackedBars,
    tokens: StackedBars,
    traces: StackedBars,
    input_tokens: f64,
    output_tokens: f64,
    observations: u64,
}

impl Dashboard {
    fn build(days: &[(String, String)], metrics: &[DailyMetrics]) -> Self {
        let by_date: HashMap<&str, &DailyMetrics> =
            metrics.iter().map(|day| (day.date.as_str(), day)).collect();
        let in_period: Vec<Option<&DailyMetrics>> = days
            .iter()
            .map(|(date, _)| by_date.get(date.as_str()).copied())
            .collect();
        // Models by tokens over the period, largest first; the tail folds into "other".
        let mut model_tokens: HashMap<String, f64> = HashMap::new();
        for usage in in_period.iter().flatten().flat_map(|day| &day.usage) {
            *model_tokens.entry(model_name(&usage.model)).or_default() += usage_tokens(usage);
        }
        let mut models: Vec<(String, f64)> = model_tokens.into_iter().collect();
        models.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut names: Vec<String> = models.into_iter().map(|(name, _)| name).collect();
        let folded = names.len() > MAX_SERIES;
        if folded {
            names.truncate(MAX_SERIES - 1);
            names.push("other models".to_owned());
        }
        let slot = |model: &Option<String>| {
            let name = model_name(model);
            names
                .iter()
                .position(|n| *n == name)
                .unwrap_or(names.len().saturating_sub(1))
        };
        let mut cost_values = vec![vec![0.0; days.len()]; names.len()];
        let mut token_values = cost_values.clone();
        let mut unattributed_cost = vec![0.0; days.len()];
        let mut dashboard = Dashboard::default();
        for (bucket, day) in in_period.iter().enumerate() {
            let Some(day) = day else { continue };
            let mut attributed = 0.0;
            for usage in &day.usage {
                let series = slot(&usage.model);
                if let Some(values) = cost_values.get_mut(series) {
                    values[bucket] += usage.total_cost;
                }
                if let Some(values) = token_values.get_mut(series) {
                    values[bucket] += usage_tokens(usage);
                }
                attributed += usage.total_cost;
                dashboard.input_tokens += usage.input_usage;
                dashboard.output_tokens += usage.output_usage;
            }
            // Cost of observations without a model.
            unattributed_cost[bucket] = (day.total_cost - attributed).max(0.0);
            dashboard.observations += day.count_observations;
        }
        let labels: Vec<String> = days.iter().map(|(_, label)| label.clone()).collect();
        let mut cost_series: Vec<BarSeries> = names
            .iter()
            .cloned()
            .zip(cost_values)
            .map(|(name, values)| BarSeries { name, values })
            .collect();
        if unattributed_cost.iter().any(|v| *v > 1e-12) {
            cost_series.push(BarSeries {
                name: "no model".to_owned(),
                values: unattributed_cost,
            });
        }
        dashboard.cost = StackedBars {
            labels: labels.clone(),
            series: cost_series,
        };
        dashboard.tokens = StackedBars {
            labels: labels.clone(),
            series: names
                .into_iter()
                .zip(token_values)
                .map(|(name, values)| BarSeries { name, values })
                .collect(),
        };
        dashboard.traces = StackedBars {
            labels,
            series: vec![BarSeries {
                name: "traces".to_owned(),
                values: in_period
                    .iter()
                    .map(|day| day.map_or(0.0, |day| day.count_traces as f64))
                    .collect(),
            }],
        };
        dashboard
    }
}

fn model_name(model: &Option<String>) -> String {
    model
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown model".to_owned())
}

fn usage_tokens(usage: &traces_api::ModelUsage) -> f64 {
    if usage.total_usage > 0.0 {
        usage.total_usage
    } else {
        usage.input_usage + usage.output_usage
    }
}

fn format_cost(dollars: f64) -> String {
    cost(Some(dollars))
}

fn format_tokens(count: f64) -> String {
    format!("{} tokens", tokens(count))
}

fn format_traces(count: f64) -> String {
    let noun = if count.round() == 1.0 {
        "trace"
    } else {
        "traces"
    };
    format!("{} {noun}", tokens(count))
}

#[component]
pub fn CostsPage(gate: KeyGate) -> impl IntoView {
    let metrics = LocalResource::new(move || {
        gate.epoch.track();
        async move {
            let days = period_days(js_sys::Date::now());
            let from = days
                .first()
                .map(|(date, _)| format!("{date}T00:00:00Z"))
                .unwrap_or_default();
            // A day more than the period, in case the server counts one at each end.
            let answer = traces_api::daily_metrics(&from, DAYS + 1).await;
            answer.map(|paged| Dashboard::build(&days, &paged.data))
        }
    });
    let dashboard = Signal::derive(move || {
        metrics.with(|answer| match answer {
            Some(Ok(dashboard)) => dashboard.clone(),
            _ => Dashboard::default(),
        })
    });
    let chart = move |pick: fn(&Dashboard) -> &StackedBars| {
        Signal::derive(move || dashboard.with(|d| pick(d).clone()))
    };
    let status = move || match metrics.get() {
        None => Some(view! { <p class="page-loading">"Reading the metrics…"</p> }.into_any()),
        Some(Err(error)) => Some(load_error("Could not read the metrics", &error)),
        Some(Ok(_)) => None,
    };
    let stat = move |label: &'static str,
                     test_id: &'static str,
                     value: fn(&Dashboard) -> String| {
        view! {
            <div class="stat">
                <div class="stat-label">{label}</div>
                <div class="stat-value" data-testid=test_id>{move || dashboard.with(value)}</div>
            </div>
        }
    };
    view! {
        <main class="page" data-testid="costs-page">
            <header class="page-header">
                <h1 class="page-title">"Costs and usage"</h1>
                <div class="header-trail">
                    <span class="muted">"Last 30 days (UTC)"</span>
                    <button type="button" class="header-button" data-testid="refresh" on:click=move |_| metrics.refetch()>
                        "Refresh"
                    </button>
                </div>
            </header>
            <div class="page-scroll">
                <div class="page-inner">
                    {status}
                    <section class="panel">
                        <div class="stat-grid">
                            {stat("Total cost", "total-cost", |d| cost(Some(d.cost.total())))}
                            {stat("Tokens", "total-tokens", |d| tokens(d.tokens.total()))}
                            {stat("Input / output", "total-io", |d| format!("{} / {}", tokens(d.input_tokens), tokens(d.output_tokens)))}
                            {stat("Traces", "total-traces", |d| tokens(d.traces.total()))}
                        </div>
                    </section>
                    <section class="panel chart-stack">
                        <StackedBarChart title="Cost per day" format=format_cost data=chart(|d| &d.cost) test_id="cost-chart" />
                        <StackedBarChart title="Tokens per day" format=format_tokens data=chart(|d| &d.tokens) test_id="tokens-chart" />
                        <StackedBarChart title="Traces per day" format=format_traces data=chart(|d| &d.traces) test_id="traces-chart" />
                    </section>
                    <p class="page-note">{move || dashboard.with(|d| format!("{} observations in the period · days are UTC", tokens(d.observations as f64)))}</p>
                </div>
            </div>
        </main>
    }
}
