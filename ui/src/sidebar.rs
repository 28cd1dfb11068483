//! The dark left sidebar: brand, page navigation (only Chat exists so far), the
//! "New chat" button and the list of stored conversations.

use leptos::prelude::*;

use crate::api::Conversation;
use crate::state::ChatState;

/// Pages of the app; only `Chat` is built so far, the rest are shown as upcoming.
const PAGES: [(&str, PageStatus); 5] = [
    ("Chat", PageStatus::Active),
    ("Documents", PageStatus::Upcoming),
    ("Agents", PageStatus::Upcoming),
    ("Traces", PageStatus::Upcoming),
    ("Dashboards", PageStatus::Upcoming),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum PageStatus {
    Active,
    Upcoming,
}

#[component]
pub fn Sidebar(state: ChatState) -> impl IntoView {
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
                    .map(|&(name, status)| match status {
                        PageStatus::Active => {
                            view! {
                                <a class="nav-item active" href="/" aria-current="page">
                                    {name}
                                </a>
                            }
                                .into_any()
                        }
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
            <button class="new-chat" data-testid="new-chat" on:click=move |_| state.new_chat()>
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
                    children=move |conversation| view! { <ConversationItem state conversation /> }
                />
            </ul>
        </aside>
    }
}

#[component]
fn ConversationItem(state: ChatState, conversation: Conversation) -> impl IntoView {
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
        move |_| state.open_conversation(id.clone())
    };
    let delete = move |event: web_sys::MouseEvent| {
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
