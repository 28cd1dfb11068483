//! Entry point of the agentbox web UI: mounts the app shell (sidebar + the page the URL
//! names: chat, GPUs, traces, one trace, sessions, one session or costs, and the API key
//! panel over them when the server asks for a key) into `<body>`.
//!
//! Client-side rendered with leptos and compiled to wasm; `scripts/build-ui.sh`
//! produces `ui/dist/`, which the server embeds and serves at `/`.

mod api;
mod auth;
mod bar_chart;
mod charts;
mod chat;
mod costs_page;
mod feedback;
mod gpu_api;
mod gpu_card;
mod gpu_page;
mod key_panel;
mod markdown;
mod pager;
mod route;
mod sessions_page;
mod sidebar;
mod state;
mod trace_format;
mod trace_tree;
mod trace_view;
mod traces_api;
mod traces_page;

use leptos::prelude::*;

use crate::auth::KeyGate;
use crate::chat::ChatPane;
use crate::costs_page::CostsPage;
use crate::gpu_page::GpuPage;
use crate::key_panel::KeyPanel;
use crate::route::{Page, Route};
use crate::sessions_page::{SessionView, SessionsPage};
use crate::sidebar::Sidebar;
use crate::state::ChatState;
use crate::trace_view::TraceView;
use crate::traces_page::{TraceListState, TracesPage};

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let gate = KeyGate::install();
    // The chat's state outlives its pane, so a reply keeps streaming while the GPUs show.
    let state = ChatState::new();
    state.load_initial();
    // A key just accepted: load again what the missing key kept out (the GPU page
    // follows the same epoch itself).
    Effect::new(move |previous_epoch: Option<u64>| {
        let epoch = gate.epoch.get();
        if previous_epoch.is_some_and(|previous| previous != epoch) {
            state.reload();
        }
        epoch
    });
    // The trace list's filters and page outlive the list, so Back from a trace finds them.
    let trace_list = TraceListState::new();
    let route = Route::from_location();
    view! {
        <div class="app">
            <Sidebar state route gate />
            {move || match route.page() {
                Page::Chat => view! { <ChatPane state /> }.into_any(),
                Page::Gpus => view! { <GpuPage gate /> }.into_any(),
                Page::Traces => view! { <TracesPage route gate list=trace_list /> }.into_any(),
                Page::Trace(id) => view! { <TraceView route gate list=trace_list id /> }.into_any(),
                Page::Sessions => view! { <SessionsPage route gate /> }.into_any(),
                Page::Session(id) => view! { <SessionView route gate id /> }.into_any(),
                Page::Costs => view! { <CostsPage gate /> }.into_any(),
            }}
        </div>
        <KeyPanel gate />
    }
}
