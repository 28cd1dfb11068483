//! The dark left sidebar: brand, page navigation (Chat, GPUs, Traces, Sessions and
//! Costs exist so far), the "New chat" button, the list of stored conversations (both open the chat page), and
//! "Forget API key" at the foot while a key is stored.

use leptos::prelude::*;
use web_sys::MouseEvent;

use crate::api::Conversation;
use crate::auth::KeyGate;
use crate::route::{Page, Route};
use crate::state::ChatState;

/// Pages of the app; those not built yet are shown as upcoming.
const PAGES: [(&str, PageStatus); 8] = [
    ("Chat", PageStatus::Built(Page::Chat)),
    ("GPUs", PageStatus::Built(Page::Gpus)),
    ("Traces", PageStatus::Built(Page::Traces)),
    ("Sessions", PageStatus::Built(Page::Sessions)),
    ("Costs", PageStatus::Built(Page::Costs)),
    ("Documents", PageStatus::Upcoming),
    ("Agents", PageStatus::Upcoming),
    ("Dashboards", PageStatus::Upcoming),
];

#[derive(Clone, PartialEq, Eq)]
enum PageStatus {
    Built(Page),
    Upcoming,
}

#[component]
pub fn Sidebar(state: ChatState, route: Route, gate: KeyGate) -> impl IntoView {
    let has_conversations = move || {
        state
            .conversations
            .with(|conversations| !conversations.is_empty())
    };
    view! {
        <aside class="sidebar">
            <div class="brand">
                <span class="brand-mark" aria-hidden="true">"◆"</span>
                <span class="brand-name">"agentbox"</span>
            </div>
            <nav class="nav" aria-label="Pages">
                {PAGES
                    .iter()
                    .map(|&(name, ref status)| match status.clone() {
                        PageStatus::Built(page) => view! { <NavLink route page name /> }.into_any(),
                        PageStatus::Upcoming => {
                            view! {
                                <span class="nav-item upcoming" title="Coming soon">
                                    {name}
                                    <span class="soon">"soon"</span>
                                </span>
                            }
                                .into_any()
                        }
                    })
                    .collect_view()}
            </nav>
            <button
                class="new-chat"
                data-testid="new-chat"
                on:click=move |_| {
                    route.go(Page::Chat);
                    state.new_chat();
                }
            >
                <span aria-hidden="true">"+"</span>
                "New chat"
            </button>
            <div class="section-label">"Conversations"</div>
            <Show when=move || !has_conversations()>
                <p class="sidebar-empty">"No conversations yet."</p>
            </Show>
            <ul class="conversation-list">
                <For
                    each=move || state.conversations.get()
                    key=|conversation| (conversation.id.clone(), conversation.title.clone())
                    children=move |conversation| view! { <ConversationItem state route conversation /> }
                />
            </ul>
            <Show when=move || gate.key.with(Option::is_some)>
                <div class="sidebar-footer">
                    <button
                        class="forget-key"
                        data-testid="forget-api-key"
                        title="Remove the API key stored in this browser"
                        on:click=move |_| gate.forget()
                    >
                        "Forget API key"
                    </button>
                </div>
            </Show>
        </aside>
    }
}

/// A page link that switches pages in place; a modified click (new tab, new window)
/// is left to the browser. Active on the page's own sub-pages too (a trace for Traces).
#[component]
fn NavLink(route: Route, page: Page, name: &'static str) -> impl IntoView {
    let href = page.path();
    let on_click = route.link(page.clone());
    let is_current = move || route.section() == page;
    view! {
        <a
            class="nav-item"
            class:active=is_current.clone()
            href=href
            aria-current=move || is_current().then_some("page")
            data-testid=format!("nav-{}", name.to_lowercase())
            on:click=on_click
        >
            {name}
        </a>
    }
}

#[component]
fn ConversationItem(state: ChatState, route: Route, conversation: Conversation) -> impl IntoView {
    let id = conversation.id;
    let is_current = {
        let id = id.clone();
        move || {
            state
                .current_id
                .with(|current| current.as_deref() == Some(id.as_str()))
        }
    };
    let open = {
        let id = id.clone();
        move |_| {
            route.go(Page::Chat);
            state.open_conversation(id.clone());
        }
    };
    let delete = move |event: MouseEvent| {
        event.stop_propagation();
        state.delete_conversation(id.clone());
    };
    view! {
        <li class="conversation" class:active=is_current data-testid="conversation-item">
            <button class="conversation-open" title=conversation.title.clone() on:click=open>
                {conversation.title.clone()}
            </button>
            <button
                class="conversation-delete"
                data-testid="delete-conversation"
                title="Delete conversation"
                aria-label="Delete conversation"
                on:click=delete
            >
                "×"
            </button>
        </li>
    }
}
