//! Sessions: the list (`/sessions`, newest first, paginated) and one session
//! (`/sessions/{id}`): its traces in order, each with what went in and what came out, so
//! a conversation reads as one. Chat conversations are sessions named by the conversation
//! id; clicking a trace opens it.

use leptos::prelude::*;

use crate::auth::KeyGate;
use crate::pager::Pager;
use crate::route::{Page, Route};
use crate::trace_format::{cost, latency, local_time, preview, short_id, time_ms};
use crate::traces_api::{self, SessionSummary, TraceSummary};
use crate::traces_page::{PAGE_SIZE, load_error};

/// Characters of input and output shown per trace.
const PREVIEW_CHARS: usize = 140;

#[component]
pub fn SessionsPage(route: Route, gate: KeyGate) -> impl IntoView {
    let page = RwSignal::new(1_u64);
    let sessions = LocalResource::new(move || {
        gate.epoch.track();
        let page = page.get();
        async move { traces_api::list_sessions(page, PAGE_SIZE).await }
    });
    let meta = Signal::derive(move || {
        sessions.with(|answer| match answer {
            Some(Ok(paged)) => Some(paged.meta.clone()),
            _ => None,
        })
    });
    let body = move || {
        match sessions.get() {
        None => view! { <p class="page-loading">"Reading the sessions…"</p> }.into_any(),
        Some(Err(error)) => load_error("Could not read the sessions", &error),
        Some(Ok(paged)) if paged.data.is_empty() => view! {
            <p class="panel empty-panel" data-testid="sessions-empty">
                "No sessions yet: chat conversations, and traces sent with a session id, appear here."
            </p>
        }
        .into_any(),
        Some(Ok(paged)) => view! {
            <section class="panel table-panel">
                <table class="data-table clickable-rows" data-testid="sessions-table">
                    <thead>
                        <tr>
                            <th>"Session"</th>
                            <th>"Started"</th>
                            <th>"Environment"</th>
                        </tr>
                    </thead>
                    <tbody>
                        {paged.data.into_iter().map(|session| view! { <SessionRow route session /> }).collect_view()}
                    </tbody>
                </table>
            </section>
        }
        .into_any(),
    }
    };
    view! {
        <main class="page" data-testid="sessions-page">
            <header class="page-header">
                <h1 class="page-title">"Sessions"</h1>
                <button type="button" class="header-button" data-testid="refresh" on:click=move |_| sessions.refetch()>
                    "Refresh"
                </button>
            </header>
            <div class="page-scroll">
                <div class="page-inner wide">
                    {body}
                    <Pager page meta noun="sessions" />
                </div>
            </div>
        </main>
    }
}

#[component]
fn SessionRow(route: Route, session: SessionSummary) -> impl IntoView {
    let page = Page::Session(session.id.clone());
    let open = {
        let page = page.clone();
        move |_| route.go(page.clone())
    };
    view! {
        <tr data-testid="session-row" data-session-id=session.id.clone() on:click=open>
            <td>
                <a class="mono-link" href=page.path() data-testid="session-link" on:click=route.link(page.clone())>
                    {session.id.clone()}
                </a>
            </td>
            <td class="nowrap">{local_time(&session.created_at)}</td>
            <td><span class="chip">{session.environment.unwrap_or_else(|| "default".to_owned())}</span></td>
        </tr>
    }
}

#[component]
pub fn SessionView(route: Route, gate: KeyGate, id: String) -> impl IntoView {
    let session = LocalResource::new({
        let id = id.clone();
        move || {
            gate.epoch.track();
            let id = id.clone();
            async move { traces_api::get_session(&id).await }
        }
    });
    let body = move || match session.get() {
        None => view! { <p class="page-loading">"Reading the session…"</p> }.into_any(),
        Some(Err(error)) => load_error("Could not read the session", &error),
        Some(Ok(session)) => {
            let mut traces = session.traces;
            // Oldest first: a conversation reads top to bottom.
            traces.sort_by(|a, b| {
                let at = |t: &TraceSummary| time_ms(&t.timestamp).unwrap_or(0.0);
                at(a).total_cmp(&at(b))
            });
            let total_cost: f64 = traces.iter().filter_map(|t| t.total_cost).sum();
            let total_latency: f64 = traces.iter().filter_map(|t| t.latency).sum();
            let users: Vec<String> = {
                let mut users: Vec<String> =
                    traces.iter().filter_map(|t| t.user_id.clone()).collect();
                users.sort();
                users.dedup();
                users
            };
            view! {
                <section class="panel" data-testid="session-summary">
                    <div class="panel-header">
                        <h2 class="mono" data-testid="session-id">{session.id.clone()}</h2>
                        <span class="muted">{format!("started {}", local_time(&session.created_at))}</span>
                    </div>
                    <div class="stat-grid">
                        <div class="stat"><div class="stat-label">"Traces"</div><div class="stat-value" data-testid="session-trace-count">{traces.len()}</div></div>
                        <div class="stat"><div class="stat-label">"Total cost"</div><div class="stat-value">{cost(Some(total_cost))}</div></div>
                        <div class="stat"><div class="stat-label">"Time in calls"</div><div class="stat-value">{latency(Some(total_latency))}</div></div>
                        <div class="stat"><div class="stat-label">"Users"</div><div class="stat-value">{if users.is_empty() { "—".to_owned() } else { users.join(", ") }}</div></div>
                    </div>
                </section>
                <section class="panel table-panel">
                    <table class="data-table clickable-rows" data-testid="session-traces">
                        <thead>
                            <tr>
                                <th>"Time"</th>
                                <th>"Name"</th>
                                <th>"Input"</th>
                                <th>"Output"</th>
                                <th class="num">"Latency"</th>
                                <th class="num">"Cost"</th>
                            </tr>
                        </thead>
                        <tbody>
                            {traces.into_iter().map(|trace| view! { <SessionTraceRow route trace /> }).collect_view()}
                        </tbody>
                    </table>
                </section>
            }
            .into_any()
        }
    };
    let back = route.link(Page::Sessions);
    view! {
        <main class="page" data-testid="session-view">
            <header class="page-header">
                <div class="header-trail">
                    <a class="back-link" href=Page::Sessions.path() on:click=back data-testid="back-to-sessions">"← Sessions"</a>
                    <h1 class="page-title">{format!("Session {}", short_id(&id))}</h1>
                </div>
                <button type="button" class="header-button" data-testid="refresh" on:click=move |_| session.refetch()>
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
fn SessionTraceRow(route: Route, trace: TraceSummary) -> impl IntoView {
    let page = Page::Trace(trace.id.clone());
    let open = {
        let page = page.clone();
        move |_| route.go(page.clone())
    };
    view! {
        <tr data-testid="session-trace-row" data-trace-id=trace.id.clone() on:click=open>
            <td class="nowrap">{local_time(&trace.timestamp)}</td>
            <td class="trace-name">
                <a href=page.path() on:click=route.link(page.clone())>{trace.name.clone().unwrap_or_else(|| short_id(&trace.id))}</a>
            </td>
            <td class="preview">{preview(&trace.input, PREVIEW_CHARS)}</td>
            <td class="preview">{preview(&trace.output, PREVIEW_CHARS)}</td>
            <td class="num">{latency(trace.latency)}</td>
            <td class="num">{cost(trace.total_cost)}</td>
        </tr>
    }
}
