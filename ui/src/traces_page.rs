//! The Traces page (`/traces`): every trace, newest first, fifty a page, filtered by user,
//! session, name and tag. A row shows when, what, who, which session, tags, latency, cost
//! and how many observations; clicking it opens the trace (`trace_view`).
//!
//! The filters and page live in [`TraceListState`], owned by the app, so Back from a trace
//! finds the list as it was left. A refused key is left to the key panel; a key accepted
//! there loads the list again.

use leptos::prelude::*;

use crate::api::ApiError;
use crate::auth::KeyGate;
use crate::pager::Pager;
use crate::route::{Page, Route};
use crate::trace_format::{cost, latency, local_time, short_id};
use crate::traces_api::{self, TraceFilters, TraceSummary};

pub const PAGE_SIZE: u64 = 50;

/// The list's query. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct TraceListState {
    pub filters: RwSignal<TraceFilters>,
    /// From 1.
    pub page: RwSignal<u64>,
}

impl TraceListState {
    pub fn new() -> Self {
        Self {
            filters: RwSignal::new(TraceFilters::default()),
            page: RwSignal::new(1),
        }
    }

    /// Shows the list filtered by `filters` alone, from its first page.
    pub fn show_only(self, route: Route, filters: TraceFilters) {
        self.filters.set(filters);
        self.page.set(1);
        route.go(Page::Traces);
    }
}

/// The page's view of a failed load: nothing for a refused key (the key panel asks for
/// one), else the error in a banner.
pub fn load_error(context: &str, error: &ApiError) -> AnyView {
    if error.is_invalid_api_key() {
        return view! { <p class="page-loading">"Waiting for an API key…"</p> }.into_any();
    }
    let message = format!("{context}: {error}");
    view! { <div class="error-banner" data-testid="error-banner" role="alert">{message}</div> }
        .into_any()
}

#[component]
pub fn TracesPage(route: Route, gate: KeyGate, list: TraceListState) -> impl IntoView {
    let traces = LocalResource::new(move || {
        gate.epoch.track();
        let filters = list.filters.get();
        let page = list.page.get();
        async move { traces_api::list_traces(&filters, page, PAGE_SIZE).await }
    });
    let meta = Signal::derive(move || {
        traces.with(|answer| match answer {
            Some(Ok(paged)) => Some(paged.meta.clone()),
            _ => None,
        })
    });
    let body = move || match traces.get() {
        None => view! { <p class="page-loading">"Reading the traces…"</p> }.into_any(),
        Some(Err(error)) => load_error("Could not read the traces", &error),
        Some(Ok(paged)) if paged.data.is_empty() => {
            let text = if list.filters.with(TraceFilters::is_empty) {
                "No traces yet: every chat and API call is traced here, and SDKs can send their own."
            } else {
                "No trace matches these filters."
            };
            view! { <p class="panel empty-panel" data-testid="traces-empty">{text}</p> }.into_any()
        }
        Some(Ok(paged)) => view! { <TraceTable route list traces=paged.data /> }.into_any(),
    };
    view! {
        <main class="page" data-testid="traces-page">
            <header class="page-header">
                <h1 class="page-title">"Traces"</h1>
                <button type="button" class="header-button" data-testid="refresh" on:click=move |_| traces.refetch()>
                    "Refresh"
                </button>
            </header>
            <div class="page-scroll">
                <div class="page-inner wide">
                    <FilterBar list />
                    {body}
                    <Pager page=list.page meta noun="traces" />
                </div>
            </div>
        </main>
    }
}

#[component]
fn FilterBar(list: TraceListState) -> impl IntoView {
    // Typing changes the draft; the list follows on Apply (or Enter).
    let draft = RwSignal::new(list.filters.get_untracked());
    Effect::new(move |_| draft.set(list.filters.get()));
    let field = move |label: &'static str,
                      test_id: &'static str,
                      get: fn(&TraceFilters) -> &String,
                      set: fn(&mut TraceFilters, String)| {
        view! {
            <label class="filter-field">
                <span class="filter-label">{label}</span>
                <input
                    type="text"
                    data-testid=test_id
                    placeholder="any"
                    prop:value=move || draft.with(|filters| get(filters).clone())
                    on:input=move |event| {
                        let value = event_target_value(&event);
                        draft.update(|filters| set(filters, value));
                    }
                />
            </label>
        }
    };
    view! {
        <form
            class="panel filter-bar"
            data-testid="trace-filters"
            on:submit=move |event| {
                event.prevent_default();
                list.filters.set(draft.get_untracked());
                list.page.set(1);
            }
        >
            {field("User", "filter-user", |f| &f.user_id, |f, v| f.user_id = v)}
            {field("Session", "filter-session", |f| &f.session_id, |f, v| f.session_id = v)}
            {field("Name", "filter-name", |f| &f.name, |f, v| f.name = v)}
            {field("Tag", "filter-tag", |f| &f.tag, |f, v| f.tag = v)}
            <div class="filter-actions">
                <button type="submit" class="primary-button" data-testid="filter-apply">"Apply"</button>
                <button
                    type="button"
                    class="secondary-button"
                    data-testid="filter-clear"
                    prop:disabled=move || list.filters.with(TraceFilters::is_empty) && draft.with(TraceFilters::is_empty)
                    on:click=move |_| {
                        draft.set(TraceFilters::default());
                        list.filters.set(TraceFilters::default());
                        list.page.set(1);
                    }
                >
                    "Clear"
                </button>
            </div>
        </form>
    }
}

#[component]
fn TraceTable(route: Route, list: TraceListState, traces: Vec<TraceSummary>) -> impl IntoView {
    view! {
        <section class="panel table-panel">
            <table class="data-table clickable-rows" data-testid="traces-table">
                <thead>
                    <tr>
                        <th>"Time"</th>
                        <th>"Name"</th>
                        <th>"User"</th>
                        <th>"Session"</th>
                        <th>"Tags"</th>
                        <th class="num">"Latency"</th>
                        <th class="num">"Cost"</th>
                        <th class="num" title="Observations">"Obs."</th>
                    </tr>
                </thead>
                <tbody>
                    {traces
                        .into_iter()
                        .map(|trace| view! { <TraceRow route list trace /> })
                        .collect_view()}
                </tbody>
            </table>
        </section>
    }
}

#[component]
fn TraceRow(route: Route, list: TraceListState, trace: TraceSummary) -> impl IntoView {
    let page = Page::Trace(trace.id.clone());
    let name = trace.name.clone().unwrap_or_else(|| short_id(&trace.id));
    let user = trace.user_id.clone().map(|user| {
        let filters = TraceFilters {
            user_id: user.clone(),
            ..TraceFilters::default()
        };
        view! {
            <button
                type="button"
                class="link-button"
                title="Show this user's traces"
                on:click=move |event| {
                    event.stop_propagation();
                    list.show_only(route, filters.clone());
                }
            >
                {user}
            </button>
        }
    });
    let session = trace.session_id.clone().map(|session| {
        let target = Page::Session(session.clone());
        view! {
            <a class="mono-link" href=target.path() title=session.clone() data-testid="trace-session" on:click=route.link(target)>
                {short_id(&session)}
            </a>
        }
    });
    let tags = trace
        .tags
        .iter()
        .cloned()
        .map(|tag| {
            let filters = TraceFilters {
                tag: tag.clone(),
                ..TraceFilters::default()
            };
            view! {
                <button
                    type="button"
                    class="chip chip-button"
                    title="Show traces with this tag"
                    on:click=move |event| {
                        event.stop_propagation();
                        list.show_only(route, filters.clone());
                    }
                >
                    {tag}
                </button>
            }
        })
        .collect_view();
    let open = {
        let page = page.clone();
        move |_| route.go(page.clone())
    };
    view! {
        <tr data-testid="trace-row" data-trace-id=trace.id.clone() on:click=open>
            <td class="nowrap">{local_time(&trace.timestamp)}</td>
            <td class="trace-name">
                <a href=page.path() data-testid="trace-link" on:click=route.link(page.clone())>{name}</a>
            </td>
            <td data-testid="trace-user">{user}</td>
            <td>{session}</td>
            <td><div class="chips">{tags}</div></td>
            <td class="num" data-testid="trace-latency">{latency(trace.latency)}</td>
            <td class="num" data-testid="trace-cost">{cost(trace.total_cost)}</td>
            <td class="num" data-testid="trace-observations">{trace.observations.len()}</td>
        </tr>
    }
}
