//! The trace view's left half: the trace and its observations as a tree (children under
//! their `parentObservationId`, siblings by start time), each row with type, name, model,
//! tokens, cost and latency, beside a timeline bar placed by start and end within the
//! trace's span. Rows with children fold; clicking a row selects it for the detail pane.

use std::collections::{HashMap, HashSet};

use leptos::prelude::*;

use crate::trace_format::{cost, latency, time_ms, tokens};
use crate::traces_api::{Observation, TraceDetail};

/// What the detail pane shows: the trace itself, or one observation by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Trace,
    Observation(String),
}

/// Bars narrower than this share of the span are widened to it, so an event still shows.
const MIN_BAR_PERCENT: f64 = 0.6;

/// One visible row of the tree.
#[derive(Clone, Debug, PartialEq)]
struct TreeRow {
    /// Index into the trace's observations.
    index: usize,
    depth: usize,
    has_children: bool,
}

/// The trace's time span in ms since the epoch: from its earliest start to its latest
/// end, never empty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    start_ms: f64,
    end_ms: f64,
}

impl Span {
    pub fn of(trace: &TraceDetail) -> Self {
        let trace_start = time_ms(&trace.timestamp);
        let starts = trace
            .observations
            .iter()
            .filter_map(|o| time_ms(&o.start_time));
        let start_ms = starts.chain(trace_start).fold(f64::INFINITY, f64::min);
        let start_ms = if start_ms.is_finite() { start_ms } else { 0.0 };
        let ends = trace.observations.iter().filter_map(observation_end_ms);
        let trace_end = trace_start
            .zip(trace.latency)
            .map(|(start, seconds)| start + seconds * 1000.0);
        let end_ms = ends.chain(trace_end).fold(start_ms, f64::max);
        Self {
            start_ms,
            end_ms: end_ms.max(start_ms + 1.0),
        }
    }

    pub fn seconds(&self) -> f64 {
        (self.end_ms - self.start_ms) / 1000.0
    }

    /// `(left, width)` in percent of the span.
    fn bar(&self, start_ms: f64, end_ms: f64) -> (f64, f64) {
        let span = self.end_ms - self.start_ms;
        let percent = |ms: f64| {
            let share = ms / span * 100.0;
            if share.is_finite() { share } else { 0.0 }
        };
        let left = percent(start_ms - self.start_ms).clamp(0.0, 100.0 - MIN_BAR_PERCENT);
        let width = percent(end_ms - start_ms).clamp(MIN_BAR_PERCENT, 100.0 - left);
        (left, width)
    }
}

fn observation_end_ms(observation: &Observation) -> Option<f64> {
    observation
        .end_time
        .as_deref()
        .and_then(time_ms)
        .or_else(|| time_ms(&observation.start_time))
}

/// The rows to show, depth first, leaving out what sits under a folded row. An
/// observation whose parent is not in the trace is shown at the top level.
fn visible_rows(observations: &[Observation], folded: &HashSet<String>) -> Vec<TreeRow> {
    let ids: HashSet<&str> = observations.iter().map(|o| o.id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<usize>> = HashMap::new();
    for (index, observation) in observations.iter().enumerate() {
        let parent = observation
            .parent_observation_id
            .as_deref()
            .filter(|parent| ids.contains(parent) && *parent != observation.id);
        children.entry(parent).or_default().push(index);
    }
    let start = |index: &usize| {
        observations
            .get(*index)
            .and_then(|o| time_ms(&o.start_time))
            .unwrap_or(f64::INFINITY)
    };
    for siblings in children.values_mut() {
        siblings.sort_by(|a, b| start(a).total_cmp(&start(b)));
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|&index| (index, 0)).collect())
        .unwrap_or_default();
    // Guards against a parent cycle, which would otherwise never end.
    let mut seen = HashSet::new();
    while let Some((index, depth)) = stack.pop() {
        let Some(observation) = observations.get(index) else {
            continue;
        };
        if !seen.insert(index) {
            continue;
        }
        let kids = children.get(&Some(observation.id.as_str()));
        let has_children = kids.is_some_and(|kids| !kids.is_empty());
        rows.push(TreeRow {
            index,
            depth,
            has_children,
        });
        if let Some(kids) = kids
            && !folded.contains(&observation.id)
        {
            stack.extend(kids.iter().rev().map(|&kid| (kid, depth + 1)));
        }
    }
    rows
}

#[component]
pub fn ObservationTree(
    trace: TraceDetail,
    selected: RwSignal<Selection>,
    folded: RwSignal<HashSet<String>>,
) -> impl IntoView {
    let span = Span::of(&trace);
    let trace = StoredValue::new(trace);
    let rows = Memo::new(move |_| {
        folded.with(|folded| trace.with_value(|trace| visible_rows(&trace.observations, folded)))
    });
    let trace_name =
        trace.with_value(|trace| trace.name.clone().unwrap_or_else(|| "trace".to_owned()));
    let trace_latency = trace.with_value(|trace| trace.latency.or(Some(span.seconds())));
    let trace_cost = trace.with_value(|trace| trace.total_cost);
    view! {
        <div class="tree" data-testid="observation-tree">
            <div class="tree-row tree-head">
                <div class="tree-label">"Observation"</div>
                <div class="timeline-axis">
                    <span>"0 s"</span>
                    <span>{format!("{:.2} s", span.seconds())}</span>
                </div>
            </div>
            <button
                type="button"
                class="tree-row"
                class:selected=move || selected.with(|s| *s == Selection::Trace)
                data-testid="tree-node"
                data-kind="TRACE"
                on:click=move |_| selected.set(Selection::Trace)
            >
                <div class="tree-label">
                    <div class="tree-title">
                        <span class="kind-badge kind-trace">"TRACE"</span>
                        <span class="tree-name">{trace_name}</span>
                    </div>
                    <div class="tree-meta">
                        <span>{latency(trace_latency)}</span>
                        <span>{cost(trace_cost)}</span>
                    </div>
                </div>
                <div class="timeline-track">
                    <div class="timeline-bar kind-trace" style:left="0%" style:width="100%"></div>
                </div>
            </button>
            <For
                each=move || rows.get()
                key=|row| (row.index, row.depth, row.has_children)
                children=move |row| {
                    let observation = trace.with_value(|trace| trace.observations.get(row.index).cloned());
                    observation.map(|observation| view! { <TreeNode observation row_depth=row.depth has_children=row.has_children span selected folded /> })
                }
            />
        </div>
    }
}

#[component]
fn TreeNode(
    observation: Observation,
    row_depth: usize,
    has_children: bool,
    span: Span,
    selected: RwSignal<Selection>,
    folded: RwSignal<HashSet<String>>,
) -> impl IntoView {
    let id = observation.id.clone();
    let is_selected = {
        let id = id.clone();
        move || selected.with(|s| matches!(s, Selection::Observation(current) if *current == id))
    };
    let is_folded = {
        let id = id.clone();
        move || folded.with(|folded| folded.contains(&id))
    };
    let toggle = {
        let id = id.clone();
        move |event: web_sys::MouseEvent| {
            event.stop_propagation();
            folded.update(|folded| {
                if !folded.remove(&id) {
                    folded.insert(id.clone());
                }
            });
        }
    };
    let kind = if observation.kind.is_empty() {
        "SPAN".to_owned()
    } else {
        observation.kind.to_uppercase()
    };
    let kind_class = format!("kind-badge kind-{}", kind.to_lowercase());
    let bar_class = format!("timeline-bar kind-{}", kind.to_lowercase());
    let start_ms = time_ms(&observation.start_time).unwrap_or(span.start_ms);
    let end_ms = observation_end_ms(&observation).unwrap_or(start_ms);
    let (left, width) = span.bar(start_ms, end_ms);
    let usage = &observation.usage;
    let token_text = (usage.total > 0.0 || usage.input > 0.0 || usage.output > 0.0)
        .then(|| format!("{} → {} tokens", tokens(usage.input), tokens(usage.output)));
    let is_error = observation.level.as_deref() == Some("ERROR");
    let bar_title = format!(
        "{} · starts at {:.0} ms · {}",
        observation.name.clone().unwrap_or_default(),
        start_ms - span.start_ms,
        latency(observation.latency)
    );
    let select = move |_| selected.set(Selection::Observation(id.clone()));
    view! {
        <button
            type="button"
            class="tree-row"
            class:selected=is_selected
            class:error=is_error
            data-testid="tree-node"
            data-kind=kind.clone()
            on:click=select
        >
            <div class="tree-label" style:padding-left=format!("{}px", 8 + row_depth * 18)>
                <div class="tree-title">
                    {has_children.then(|| view! {
                        <span class="fold" role="button" aria-label="Fold or unfold" on:click=toggle.clone()>
                            {move || if is_folded() { "▸" } else { "▾" }}
                        </span>
                    })}
                    <span class=kind_class>{kind.clone()}</span>
                    <span class="tree-name" data-testid="node-name">{observation.name.clone().unwrap_or_default()}</span>
                </div>
                <div class="tree-meta">
                    {observation.model.clone().map(|model| view! { <span class="node-model" data-testid="node-model">{model}</span> })}
                    {token_text.map(|text| view! { <span data-testid="node-tokens">{text}</span> })}
                    {observation.calculated_total_cost.map(|dollars| view! { <span data-testid="node-cost">{cost(Some(dollars))}</span> })}
                    <span data-testid="node-latency">{latency(observation.latency)}</span>
                </div>
            </div>
            <div class="timeline-track">
                <div
                    class=bar_class
                    title=bar_title
                    style:left=format!("{left:.2}%")
                    style:width=format!("{width:.2}%")
                ></div>
            </div>
        </button>
    }
}
