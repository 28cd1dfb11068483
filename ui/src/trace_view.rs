//! One trace (`/traces/{id}`): a summary (name, time, user, session, tags, latency, cost,
//! tokens, scores), the observation tree with its timeline (`trace_tree`), and a detail
//! pane for the selected node: its figures, input, output and metadata as indented JSON,
//! and its scores.

use std::collections::HashSet;

use leptos::prelude::*;
use serde_json::Value;

use crate::auth::KeyGate;
use crate::route::{Page, Route};
use crate::trace_format::{cost, latency, local_time, pretty_json, tokens};
use crate::trace_tree::{ObservationTree, Selection};
use crate::traces_api::{self, Observation, Score, TraceDetail, TraceFilters};
use crate::traces_page::{TraceListState, load_error};

#[component]
pub fn TraceView(route: Route, gate: KeyGate, list: TraceListState, id: String) -> impl IntoView {
    let trace = LocalResource::new(move || {
        gate.epoch.track();
        let id = id.clone();
        async move { traces_api::get_trace(&id).await }
    });
    // Kept across a refresh, so the same node stays open.
    let selected = RwSignal::new(Selection::Trace);
    let folded = RwSignal::new(HashSet::new());
    let body = move || match trace.get() {
        None => view! { <p class="page-loading">"Reading the trace…"</p> }.into_any(),
        Some(Err(error)) => load_error("Could not read the trace", &error),
        Some(Ok(trace)) => view! { <TraceBody route list trace selected folded /> }.into_any(),
    };
    let back = route.link(Page::Traces);
    view! {
        <main class="page" data-testid="trace-view">
            <header class="page-header">
                <div class="header-trail">
                    <a class="back-link" href=Page::Traces.path() on:click=back data-testid="back-to-traces">"← Traces"</a>
                    <h1 class="page-title">"Trace"</h1>
                </div>
                <button type="button" class="header-button" data-testid="refresh" on:click=move |_| trace.refetch()>
                    "Refresh"
                </button>
            </header>
            <div class="page-scroll">
                <div class="page-inner wide">{body}</div>
            </div>
        </main>
    }
}

#[component]
fn TraceBody(
    route: Route,
    list: TraceListState,
    trace: TraceDetail,
    selected: RwSignal<Selection>,
    folded: RwSignal<HashSet<String>>,
) -> impl IntoView {
    let stored = StoredValue::new(trace.clone());
    let detail = move || {
        let selection = selected.get();
        stored.with_value(|trace| match &selection {
            Selection::Observation(id) => match trace.observations.iter().find(|o| o.id == *id) {
                Some(observation) => {
                    let scores = scores_of(&trace.scores, Some(id));
                    view! { <ObservationDetail observation=observation.clone() scores /> }
                        .into_any()
                }
                None => {
                    view! { <p class="muted">"This observation is no longer in the trace."</p> }
                        .into_any()
                }
            },
            Selection::Trace => {
                let scores = scores_of(&trace.scores, None);
                view! { <TraceDetailPane trace=trace.clone() scores /> }.into_any()
            }
        })
    };
    view! {
        <TraceSummaryPanel route list trace=trace.clone() />
        <div class="trace-layout">
            <section class="panel tree-panel">
                <div class="panel-header">
                    <h2>"Observations"</h2>
                    <span class="muted">{format!("{} in this trace", trace.observations.len())}</span>
                </div>
                <ObservationTree trace selected folded />
            </section>
            <section class="panel detail-panel" data-testid="node-detail">{detail}</section>
        </div>
    }
}

/// The scores on one observation, or (`None`) those on the trace as a whole.
fn scores_of(scores: &[Score], observation_id: Option<&String>) -> Vec<Score> {
    scores
        .iter()
        .filter(|score| score.observation_id.as_ref() == observation_id)
        .cloned()
        .collect()
}

#[component]
fn TraceSummaryPanel(route: Route, list: TraceListState, trace: TraceDetail) -> impl IntoView {
    let total_tokens: f64 = trace
        .observations
        .iter()
        .map(|o| o.usage.total.max(o.usage.input + o.usage.output))
        .sum();
    let user = trace.user_id.clone().map(|user| {
        let filters = TraceFilters {
            user_id: user.clone(),
            ..TraceFilters::default()
        };
        view! {
            <button type="button" class="link-button" on:click=move |_| list.show_only(route, filters.clone())>{user}</button>
        }
    });
    let session = trace.session_id.clone().map(|session| {
        let page = Page::Session(session.clone());
        view! { <a class="mono-link" href=page.path() data-testid="summary-session" on:click=route.link(page)>{session}</a> }
    });
    let tags = trace
        .tags
        .iter()
        .cloned()
        .map(|tag| view! { <span class="chip">{tag}</span> })
        .collect_view();
    let scores = trace
        .scores
        .iter()
        .cloned()
        .map(|score| view! { <ScoreChip score /> })
        .collect_view();
    view! {
        <section class="panel trace-summary" data-testid="trace-summary">
            <div class="panel-header">
                <h2 data-testid="trace-name">{trace.name.clone().unwrap_or_else(|| "Unnamed trace".to_owned())}</h2>
                <span class="mono muted" data-testid="trace-id">{trace.id.clone()}</span>
            </div>
            <div class="stat-grid">
                <Stat label="Time" value=local_time(&trace.timestamp) />
                <Stat label="Latency" value=latency(trace.latency) />
                <Stat label="Cost" value=cost(trace.total_cost) />
                <Stat label="Tokens" value=tokens(total_tokens) />
            </div>
            <dl class="facts">
                <dt>"User"</dt>
                <dd>{user.map(IntoAny::into_any).unwrap_or_else(|| "—".into_any())}</dd>
                <dt>"Session"</dt>
                <dd>{session.map(IntoAny::into_any).unwrap_or_else(|| "—".into_any())}</dd>
                <dt>"Tags"</dt>
                <dd><div class="chips">{tags}</div></dd>
                <dt>"Scores"</dt>
                <dd><div class="chips" data-testid="trace-scores">{scores}</div></dd>
            </dl>
        </section>
    }
}

#[component]
fn Stat(label: &'static str, value: String) -> impl IntoView {
    view! {
        <div class="stat">
            <div class="stat-label">{label}</div>
            <div class="stat-value">{value}</div>
        </div>
    }
}

#[component]
fn ScoreChip(score: Score) -> impl IntoView {
    let value = match (
        score.data_type.as_str(),
        score.value,
        score.string_value.clone(),
    ) {
        ("BOOLEAN", Some(value), _) => (value != 0.0).to_string(),
        (_, _, Some(text)) if !text.is_empty() => text,
        (_, Some(value), _) => format!("{value}"),
        _ => "—".to_owned(),
    };
    view! {
        <span class="chip score-chip" data-testid="score" data-score-name=score.name.clone() title=score.comment.clone().unwrap_or_default()>
            <span class="score-name">{score.name.clone()}</span>
            ": "
            <span class="score-value">{value}</span>
        </span>
    }
}

#[component]
fn TraceDetailPane(trace: TraceDetail, scores: Vec<Score>) -> impl IntoView {
    view! {
        <div class="detail-head">
            <span class="kind-badge kind-trace">"TRACE"</span>
            <h2>{trace.name.clone().unwrap_or_default()}</h2>
        </div>
        <ScoreList scores />
        <JsonBlock title="Input" value=trace.input />
        <JsonBlock title="Output" value=trace.output />
        <JsonBlock title="Metadata" value=trace.metadata />
    }
}

#[component]
fn ObservationDetail(observation: Observation, scores: Vec<Score>) -> impl IntoView {
    let kind = observation.kind.to_uppercase();
    let usage = &observation.usage;
    let mut facts: Vec<(&'static str, String)> = vec![
        ("Start", local_time(&observation.start_time)),
        ("Latency", latency(observation.latency)),
    ];
    if let Some(model) = &observation.model {
        facts.push(("Model", model.clone()));
    }
    if observation.time_to_first_token.is_some() {
        facts.push(("First token", latency(observation.time_to_first_token)));
    }
    if usage.total > 0.0 || usage.input > 0.0 || usage.output > 0.0 {
        facts.push((
            "Tokens",
            format!(
                "{} in · {} out · {} total",
                tokens(usage.input),
                tokens(usage.output),
                tokens(usage.total)
            ),
        ));
    }
    if let Some(dollars) = observation.calculated_total_cost {
        facts.push(("Cost", cost(Some(dollars))));
    }
    if let Some(level) = observation.level.clone().filter(|level| level != "DEFAULT") {
        facts.push(("Level", level));
    }
    if let Some(message) = observation.status_message.clone() {
        facts.push(("Status", message));
    }
    view! {
        <div class="detail-head">
            <span class=format!("kind-badge kind-{}", kind.to_lowercase())>{kind.clone()}</span>
            <h2 data-testid="detail-name">{observation.name.clone().unwrap_or_default()}</h2>
        </div>
        <dl class="facts" data-testid="detail-facts">
            {facts
                .into_iter()
                .map(|(label, value)| view! { <dt>{label}</dt><dd>{value}</dd> })
                .collect_view()}
        </dl>
        <ScoreList scores />
        <JsonBlock title="Model parameters" value=observation.model_parameters />
        <JsonBlock title="Input" value=observation.input />
        <JsonBlock title="Output" value=observation.output />
        <JsonBlock title="Metadata" value=observation.metadata />
    }
}

#[component]
fn ScoreList(scores: Vec<Score>) -> impl IntoView {
    (!scores.is_empty()).then(|| {
        view! {
            <div class="json-block">
                <div class="subsection-title">"Scores"</div>
                <div class="chips">
                    {scores.into_iter().map(|score| view! { <ScoreChip score /> }).collect_view()}
                </div>
            </div>
        }
    })
}

#[component]
fn JsonBlock(title: &'static str, value: Value) -> impl IntoView {
    let test_id = format!("json-{}", title.to_lowercase().replace(' ', "-"));
    let body = if value.is_null() {
        view! { <p class="muted">"—"</p> }.into_any()
    } else {
        view! { <pre class="json" data-testid=test_id>{pretty_json(&value)}</pre> }.into_any()
    };
    view! {
        <div class="json-block">
            <div class="subsection-title">{title}</div>
            {body}
        </div>
    }
}
