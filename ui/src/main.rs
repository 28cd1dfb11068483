//! Entry point of the agentbox web UI: mounts the app shell (sidebar + the page the URL
//! names: chat or GPUs) into `<body>`.
//!
//! Client-side rendered with leptos and compiled to wasm; `scripts/build-ui.sh`
//! produces `ui/dist/`, which the server embeds and serves at `/`.

mod api;
mod charts;
mod chat;
mod gpu_api;
mod gpu_card;
mod gpu_page;
mod markdown;
mod route;
mod sidebar;
mod state;

use leptos::prelude::*;

use crate::chat::ChatPane;
use crate::gpu_page::GpuPage;
use crate::route::{Page, Route};
use crate::sidebar::Sidebar;
use crate::state::ChatState;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    // The chat's state outlives its pane, so a reply keeps streaming while the GPUs show.
    let state = ChatState::new();
    state.load_initial();
    let route = Route::from_location();
    view! {
        <div class="app">
            <Sidebar state route />
            {move || match route.page() {
                Page::Chat => view! { <ChatPane state /> }.into_any(),
                Page::Gpus => view! { <GpuPage /> }.into_any(),
            }}
        </div>
    }
}
