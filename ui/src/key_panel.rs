//! The "API key" panel: a centered dialog over the app, shown while the server refuses
//! the UI's calls for want of a (right) key. It checks a key with the server before
//! storing it, and shows the server's refusal when the key is wrong.

use leptos::html::Input;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;
use crate::auth::KeyGate;

#[component]
pub fn KeyPanel(gate: KeyGate) -> impl IntoView {
    let draft = RwSignal::new(String::new());
    let checking = RwSignal::new(false);
    let input: NodeRef<Input> = NodeRef::new();

    // Focus the field as soon as the panel shows.
    Effect::new(move |_| {
        if let Some(element) = input.get() {
            let _ = element.focus();
        }
    });

    let submit = move || {
        let candidate = draft.get_untracked().trim().to_owned();
        if candidate.is_empty() || checking.get_untracked() {
            return;
        }
        checking.set(true);
        spawn_local(async move {
            let answer = api::check_key(&candidate).await;
            checking.set(false);
            match answer {
                Ok(()) => {
                    draft.set(String::new());
                    gate.accept(candidate);
                }
                Err(error) => gate.error.set(Some(error.message)),
            }
        });
    };
    let cannot_submit = move || checking.get() || draft.with(|text| text.trim().is_empty());

    view! {
        <Show when=move || gate.prompt_shown.get()>
            <div class="key-overlay">
                <form
                    class="key-panel"
                    role="dialog"
                    aria-modal="true"
                    aria-labelledby="key-panel-title"
                    data-testid="api-key-panel"
                    on:submit=move |event| {
                        event.prevent_default();
                        submit();
                    }
                >
                    <div class="key-icon" aria-hidden="true">
                        <svg viewBox="0 0 24 24">
                            <circle cx="8" cy="15" r="4" />
                            <path d="M10.8 12.2 20 3M16 7l3 3M14 9l2 2" />
                        </svg>
                    </div>
                    <h2 id="key-panel-title">"API key"</h2>
                    <p class="key-explain">
                        "This agentbox server requires an API key. Enter the key it was started with ("
                        <code>"AGENTBOX_MASTER_KEY"</code>
                        ") to continue."
                    </p>
                    <input
                        type="password"
                        class="key-input"
                        data-testid="api-key-input"
                        node_ref=input
                        placeholder="sk-…"
                        autocomplete="current-password"
                        aria-label="API key"
                        prop:value=move || draft.get()
                        on:input=move |event| draft.set(event_target_value(&event))
                    />
                    {move || {
                        gate.error
                            .get()
                            .map(|message| {
                                view! {
                                    <p class="key-error" data-testid="api-key-error" role="alert">
                                        {message}
                                    </p>
                                }
                            })
                    }}
                    <button type="submit" class="key-submit" data-testid="api-key-submit" prop:disabled=cannot_submit>
                        {move || if checking.get() { "Connecting…" } else { "Connect" }}
                    </button>
                    <p class="key-note">"The key is kept in this browser's local storage."</p>
                </form>
            </div>
        </Show>
    }
}
