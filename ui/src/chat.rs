//! The chat pane: header with the model picker, the message list (assistant
//! replies rendered as Markdown, streaming in place, with thumbs up / down under those
//! whose trace is known), and the composer.

use leptos::html::{Div, Textarea};
use leptos::prelude::*;
use web_sys::KeyboardEvent;

use crate::feedback::FeedbackButtons;
use crate::markdown;
use crate::state::{ChatState, Role, UiMessage};

/// Distance from the bottom, in pixels, within which the list keeps following new text.
const STICK_TO_BOTTOM_PX: i32 = 48;

#[component]
pub fn ChatPane(state: ChatState) -> impl IntoView {
    let title = move || {
        state
            .current_title()
            .unwrap_or_else(|| "New chat".to_owned())
    };
    view! {
        <main class="chat">
            <header class="chat-header">
                <h1 class="chat-title">{title}</h1>
                <ModelPicker state />
            </header>
            <ErrorBanner state />
            <MessageList state />
            <Composer state />
        </main>
    }
}

#[component]
fn ModelPicker(state: ChatState) -> impl IntoView {
    view! {
        <label class="model-picker">
            <span class="model-picker-label">"Model"</span>
            <select
                data-testid="model-picker"
                prop:disabled=move || state.chat_models.with(Vec::is_empty)
                on:change=move |event| state.selected_model.set(event_target_value(&event))
            >
                <For
                    each=move || state.chat_models.get()
                    key=|model| model.clone()
                    children=move |model| {
                        let value = model.clone();
                        let is_selected = move || state.selected_model.with(|selected| *selected == value);
                        view! {
                            <option value=model.clone() prop:selected=is_selected>
                                {model.clone()}
                            </option>
                        }
                    }
                />
            </select>
        </label>
    }
}

#[component]
fn ErrorBanner(state: ChatState) -> impl IntoView {
    move || {
        state.error.get().map(|message| {
            view! {
                <div class="error-banner" data-testid="error-banner" role="alert">
                    <span class="error-message">{message}</span>
                    <button
                        class="error-dismiss"
                        title="Dismiss"
                        aria-label="Dismiss"
                        on:click=move |_| state.error.set(None)
                    >
                        "×"
                    </button>
                </div>
            }
        })
    }
}

#[component]
fn MessageList(state: ChatState) -> impl IntoView {
    let scroller: NodeRef<Div> = NodeRef::new();
    let follow_bottom = StoredValue::new(true);

    // Keep the newest text in view while the user has not scrolled up.
    Effect::new(move |_| {
        state.messages.track();
        state.streaming_reply.track();
        if let Some(list) = scroller.get()
            && follow_bottom.get_value()
        {
            list.set_scroll_top(list.scroll_height());
        }
    });
    let on_scroll = move |_| {
        if let Some(list) = scroller.get() {
            let from_bottom = list.scroll_height() - list.scroll_top() - list.client_height();
            follow_bottom.set_value(from_bottom < STICK_TO_BOTTOM_PX);
        }
    };
    let is_empty = move || state.messages.with(Vec::is_empty) && !state.is_streaming();
    let streaming_html = move || {
        state
            .streaming_reply
            .with(|reply| reply.as_deref().map(markdown::render).unwrap_or_default())
    };
    let waiting_for_first_token = move || {
        state
            .streaming_reply
            .with(|reply| reply.as_deref() == Some(""))
    };

    view! {
        <div class="messages" node_ref=scroller on:scroll=on_scroll>
            <div class="messages-inner">
                <Show when=is_empty>
                    <div class="empty-state">
                        <div class="empty-logo">"◆"</div>
                        <h2>"How can I help?"</h2>
                        <p>"Pick a model, type a message, and press Enter."</p>
                    </div>
                </Show>
                <For
                    each=move || state.messages.get()
                    // A stored answer whose trace turns up later is drawn again, with its buttons.
                    key=|message| (message.key, message.trace_id.is_some())
                    children=|message| view! { <MessageBubble message /> }
                />
                <Show when=move || state.is_streaming()>
                    <div class="message assistant streaming">
                        <div class="avatar" aria-hidden="true">"◆"</div>
                        <div class="bubble markdown" data-testid="message-assistant" inner_html=streaming_html></div>
                        <Show when=waiting_for_first_token>
                            <div class="typing" aria-label="Waiting for the reply">
                                <span></span>
                                <span></span>
                                <span></span>
                            </div>
                        </Show>
                    </div>
                </Show>
            </div>
        </div>
    }
}

#[component]
fn MessageBubble(message: UiMessage) -> impl IntoView {
    match message.role {
        Role::User => view! {
            <div class="message user">
                <div class="bubble" data-testid="message-user">{message.content}</div>
            </div>
        }
        .into_any(),
        Role::Assistant => view! {
            <div class="message assistant">
                <div class="avatar" aria-hidden="true">"◆"</div>
                <div class="answer">
                    <div class="bubble markdown" data-testid="message-assistant" inner_html=markdown::render(&message.content)></div>
                    {message.trace_id.map(|trace_id| view! { <FeedbackButtons trace_id initial=message.vote /> })}
                </div>
            </div>
        }
        .into_any(),
        Role::System => view! {
            <div class="message system">
                <div class="bubble" data-testid="message-system">{message.content}</div>
            </div>
        }
        .into_any(),
    }
}

#[component]
fn Composer(state: ChatState) -> impl IntoView {
    let draft = RwSignal::new(String::new());
    let textarea: NodeRef<Textarea> = NodeRef::new();

    // Grow the textarea with its content (CSS caps the height).
    Effect::new(move |_| {
        draft.track();
        if let Some(element) = textarea.get() {
            let style = web_sys::HtmlElement::style(&element);
            let _ = style.set_property("height", "auto");
            let _ = style.set_property("height", &format!("{}px", element.scroll_height()));
        }
    });

    let submit = move || {
        if state.send(&draft.get_untracked()) {
            draft.set(String::new());
        }
    };
    let on_keydown = move |event: KeyboardEvent| {
        if event.key() == "Enter" && !event.shift_key() && !event.is_composing() {
            event.prevent_default();
            submit();
        }
    };
    let cannot_send = move || {
        draft.with(|text| text.trim().is_empty()) || state.selected_model.with(String::is_empty)
    };
    let placeholder = move || {
        let model = state.selected_model.get();
        if model.is_empty() {
            "Message".to_owned()
        } else {
            format!("Message {model}")
        }
    };

    view! {
        <div class="composer-wrap">
            <form
                class="composer"
                on:submit=move |event| {
                    event.prevent_default();
                    submit();
                }
            >
                <textarea
                    data-testid="message-input"
                    node_ref=textarea
                    rows="1"
                    placeholder=placeholder
                    prop:value=move || draft.get()
                    on:input=move |event| draft.set(event_target_value(&event))
                    on:keydown=on_keydown
                ></textarea>
                <Show
                    when=move || state.is_streaming()
                    fallback=move || {
                        view! {
                            <button type="submit" class="send" data-testid="send-button" prop:disabled=cannot_send>
                                "Send"
                            </button>
                        }
                    }
                >
                    <button type="button" class="stop" data-testid="stop-button" on:click=move |_| state.stop()>
                        <span class="stop-square" aria-hidden="true"></span>
                        "Stop"
                    </button>
                </Show>
            </form>
            <p class="composer-hint">"Enter to send · Shift+Enter for a new line"</p>
        </div>
    }
}
