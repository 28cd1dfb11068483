//! Entry point of the agentbox web UI: mounts the app shell (sidebar + chat pane) into `<body>`.
//!
//! Client-side rendered with leptos and compiled to wasm; `scripts/build-ui.sh`
//! produces `ui/dist/`, which the server embeds and serves at `/`.

mod api;
mod chat;
mod markdown;
mod sidebar;
mod state;

use leptos::prelude::*;

use crate::chat::ChatPane;
use crate::sidebar::Sidebar;
use crate::state::ChatState;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let state = ChatState::new();
    state.load_initial();
    view! {
        <div class="app">
            <Sidebar state />
            <ChatPane state />
        </div>
    }
}
