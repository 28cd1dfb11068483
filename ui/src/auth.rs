//! The API key the UI sends to a server started with a master key, and the gate that asks
//! for it: the key lives in `localStorage` (`agentbox.api_key`) and goes out as
//! `Authorization: Bearer KEY` on every call (`api.rs`). A 401 `invalid_api_key` opens the
//! key panel (`key_panel.rs`) once, however many calls fail together; a key the panel
//! accepts bumps `epoch`, and the pages reload what they could not read.
//!
//! The gate is reached through a thread-local because `api`'s free functions run in
//! spawned tasks, which carry no reactive owner to look a context up in; the wasm UI has
//! one thread.

use std::cell::Cell;

use leptos::prelude::*;

/// The `localStorage` entry holding the key.
const STORAGE_KEY: &str = "agentbox.api_key";

thread_local! {
    static GATE: Cell<Option<KeyGate>> = const { Cell::new(None) };
}

/// The key in use and the panel's state. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct KeyGate {
    /// The key sent with every call; `None` when none is stored.
    pub key: RwSignal<Option<String>>,
    /// Whether the key panel is shown.
    pub prompt_shown: RwSignal<bool>,
    /// The server's refusal of the last key tried, shown in the panel.
    pub error: RwSignal<Option<String>>,
    /// Bumped each time the panel accepts a key, so pages retry what failed.
    pub epoch: RwSignal<u64>,
}

impl KeyGate {
    /// Creates the gate with the stored key and makes it the one `api` reports to.
    pub fn install() -> Self {
        let gate = Self {
            key: RwSignal::new(read_stored_key()),
            prompt_shown: RwSignal::new(false),
            error: RwSignal::new(None),
            epoch: RwSignal::new(0),
        };
        GATE.with(|cell| cell.set(Some(gate)));
        gate
    }

    /// Stores a key the server has just accepted, closes the panel and retries the pages.
    pub fn accept(self, key: String) {
        // Without storage (a private window may refuse it) the key still serves this page.
        if let Some(storage) = local_storage() {
            let _ = storage.set_item(STORAGE_KEY, &key);
        }
        self.key.set(Some(key));
        self.error.set(None);
        self.prompt_shown.set(false);
        self.epoch.update(|epoch| *epoch += 1);
    }

    /// Removes the stored key and reloads the app, which then asks for a key again
    /// (when the server wants one).
    pub fn forget(self) {
        if let Some(storage) = local_storage() {
            let _ = storage.remove_item(STORAGE_KEY);
        }
        self.key.set(None);
        let _ = window().location().reload();
    }
}

/// The key to send, if any (untracked: requests are not reactive).
pub fn current_key() -> Option<String> {
    match GATE.with(Cell::get) {
        Some(gate) => gate.key.get_untracked(),
        None => read_stored_key(),
    }
}

/// Called by `api` when the server refuses the key a call carried (`sent_key`, `None` when
/// the call carried none). Opens the panel unless it is open already, or unless the key
/// has changed since the call went out (the refusal is stale).
pub fn key_rejected(sent_key: Option<&str>, message: &str) {
    let Some(gate) = GATE.with(Cell::get) else {
        return;
    };
    let stale = gate.key.with_untracked(|key| key.as_deref() != sent_key);
    if stale || gate.prompt_shown.get_untracked() {
        return;
    }
    // A missing key needs no error line; a refused one shows the server's words.
    gate.error.set(sent_key.map(|_| message.to_owned()));
    gate.prompt_shown.set(true);
}

fn read_stored_key() -> Option<String> {
    local_storage()?
        .get_item(STORAGE_KEY)
        .ok()
        .flatten()
        .filter(|key| !key.is_empty())
}

fn local_storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}
