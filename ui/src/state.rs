//! The chat page's state and the actions that change it: sending, streaming,
//! stopping, and loading, creating and deleting stored conversations.
//!
//! Each reply is traced by the server under a trace id chosen here (and in the
//! conversation's session), so the answer can carry thumbs up / down (`feedback`).
//!
//! Views only read these signals and call these methods; all server traffic goes through `api`.

use leptos::prelude::*;
use leptos::task::spawn_local;
use web_sys::AbortController;

use crate::api::{self, ApiError, Conversation, OutgoingMessage, StreamEnd, TraceContext};
use crate::feedback::{find_answer_traces, new_trace_id};

/// Length, in characters, of a conversation title taken from its first message.
const TITLE_CHARS: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }

    fn parse(role: &str) -> Self {
        match role {
            "user" => Role::User,
            "system" => Role::System,
            _ => Role::Assistant,
        }
    }
}

/// A message shown in the chat pane; `key` is unique within the page's lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct UiMessage {
    pub key: u64,
    pub role: Role,
    pub content: String,
    /// The trace of the call that wrote this answer: chosen by this page, or found again
    /// for a stored answer (stored messages do not keep it).
    pub trace_id: Option<String>,
    /// The feedback already given on a stored answer (`Some(true)` for thumbs up).
    pub vote: Option<bool>,
}

/// Every signal the chat page renders from. Cheap to copy into closures.
#[derive(Clone, Copy)]
pub struct ChatState {
    /// Ids of the models that can chat, in server order.
    pub chat_models: RwSignal<Vec<String>>,
    pub selected_model: RwSignal<String>,
    /// Stored conversations, newest first.
    pub conversations: RwSignal<Vec<Conversation>>,
    /// The open conversation; `None` for a new chat not yet stored.
    pub current_id: RwSignal<Option<String>>,
    pub messages: RwSignal<Vec<UiMessage>>,
    /// The reply being streamed; `Some` exactly while a reply is in flight.
    pub streaming_reply: RwSignal<Option<String>>,
    pub error: RwSignal<Option<String>>,
    abort: StoredValue<Option<AbortController>, LocalStorage>,
    /// Bumped whenever the pane moves to another conversation, so a stream that
    /// finishes afterwards no longer writes into the pane (it is still saved).
    pane_generation: StoredValue<u64>,
    next_key: StoredValue<u64>,
}

impl ChatState {
    pub fn new() -> Self {
        Self {
            chat_models: RwSignal::new(Vec::new()),
            selected_model: RwSignal::new(String::new()),
            conversations: RwSignal::new(Vec::new()),
            current_id: RwSignal::new(None),
            messages: RwSignal::new(Vec::new()),
            streaming_reply: RwSignal::new(None),
            error: RwSignal::new(None),
            abort: StoredValue::new_local(None),
            pane_generation: StoredValue::new(0),
            next_key: StoredValue::new(0),
        }
    }

    /// Fetches the model list and the stored conversations.
    pub fn load_initial(self) {
        spawn_local(async move {
            match api::list_models().await {
                Ok(models) => {
                    let chat_models: Vec<String> = models
                        .into_iter()
                        .filter(|model| model.can_chat())
                        .map(|model| model.id)
                        .collect();
                    if chat_models.is_empty() {
                        self.show_error("The server has no chat model loaded.");
                    }
                    let selected = self.selected_model.get_untracked();
                    if let Some(first) = chat_models.first()
                        && !chat_models.contains(&selected)
                    {
                        self.selected_model.set(first.clone());
                    }
                    self.chat_models.set(chat_models);
                }
                Err(error) => self.report_error("Could not load models", &error),
            }
        });
        self.refresh_conversations();
    }

    /// Loads everything again, and the open conversation's messages: after an API key
    /// was accepted, what failed before it now succeeds.
    pub fn reload(self) {
        self.error.set(None);
        self.load_initial();
        if let Some(id) = self.current_id.get_untracked()
            && !self.is_streaming_untracked()
        {
            self.load_messages(id);
        }
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming_reply.with(Option::is_some)
    }

    fn is_streaming_untracked(&self) -> bool {
        self.streaming_reply.with_untracked(Option::is_some)
    }

    pub fn show_error(&self, message: impl Into<String>) {
        self.error.set(Some(message.into()));
    }

    /// Shows a failed load in the banner, except a refused API key: the key panel
    /// tells that one, and the load is retried once a key is accepted.
    fn report_error(&self, context: &str, error: &ApiError) {
        if !error.is_invalid_api_key() {
            self.show_error(format!("{context}: {error}"));
        }
    }

    pub fn current_title(&self) -> Option<String> {
        let current_id = self.current_id.get()?;
        self.conversations.with(|conversations| {
            conversations
                .iter()
                .find(|conversation| conversation.id == current_id)
                .map(|conversation| conversation.title.clone())
        })
    }

    /// Sends `text` as the next user message and streams the reply.
    /// Returns whether the message was accepted (not empty, nothing in flight).
    pub fn send(self, text: &str) -> bool {
        let text = text.trim().to_owned();
        if text.is_empty() || self.is_streaming_untracked() {
            return false;
        }
        let model = self.selected_model.get_untracked();
        if model.is_empty() {
            self.show_error("No chat model is available.");
            return false;
        }
        let controller = match AbortController::new() {
            Ok(controller) => controller,
            Err(_) => {
                self.show_error("This browser cannot cancel requests (no AbortController).");
                return false;
            }
        };
        self.error.set(None);
        self.push_message(Role::User, text.clone());
        let history: Vec<(Role, String)> = self.messages.with_untracked(|messages| {
            messages
                .iter()
                .map(|message| (message.role, message.content.clone()))
                .collect()
        });
        self.abort.set_value(Some(controller.clone()));
        self.streaming_reply.set(Some(String::new()));
        let generation = self.pane_generation.get_value();

        spawn_local(async move {
            let conversation_id = match self.ensure_conversation(&text, &model, generation).await {
                Ok(id) => Some(id),
                Err(error) => {
                    self.show_error(format!("Could not save the conversation: {error}"));
                    None
                }
            };
            if let Some(id) = &conversation_id
                && let Err(error) = api::add_message(id, Role::User.as_str(), &text).await
            {
                self.show_error(format!("Could not save your message: {error}"));
            }

            let outgoing: Vec<OutgoingMessage<'_>> = history
                .iter()
                .map(|(role, content)| OutgoingMessage {
                    role: role.as_str(),
                    content,
                })
                .collect();
            let trace = TraceContext {
                trace_id: new_trace_id(),
                session_id: conversation_id.clone(),
            };
            let mut reply = String::new();
            let outcome =
                api::stream_chat(&model, &outgoing, &trace, &controller.signal(), |delta| {
                    reply.push_str(delta);
                    if self.pane_generation.get_value() == generation {
                        self.streaming_reply.update(|streaming| {
                            if let Some(streaming) = streaming {
                                streaming.push_str(delta);
                            }
                        });
                    }
                })
                .await;

            let pane_unchanged = self.pane_generation.get_value() == generation;
            if pane_unchanged {
                self.abort.set_value(None);
                self.streaming_reply.set(None);
                if !reply.is_empty() {
                    self.push_answer(reply.clone(), trace.trace_id.clone());
                }
                match outcome {
                    Ok(StreamEnd::Finished(_) | StreamEnd::Aborted) => {}
                    Err(error) => self.show_error(error.message),
                }
            }
            if let (Some(id), false) = (&conversation_id, reply.is_empty()) {
                if let Err(error) = api::add_message(id, Role::Assistant.as_str(), &reply).await {
                    self.show_error(format!("Could not save the reply: {error}"));
                }
                self.refresh_conversations();
            }
        });
        true
    }

    /// Stops the reply in flight; what has arrived so far is kept and saved.
    pub fn stop(self) {
        self.abort.with_value(|controller| {
            if let Some(controller) = controller {
                controller.abort();
            }
        });
    }

    /// Clears the pane for a conversation that is stored on first send.
    pub fn new_chat(self) {
        self.leave_pane();
        self.current_id.set(None);
        self.messages.set(Vec::new());
    }

    pub fn open_conversation(self, id: String) {
        if self.current_id.get_untracked().as_deref() == Some(id.as_str()) {
            return;
        }
        self.leave_pane();
        self.current_id.set(Some(id.clone()));
        self.load_messages(id);
    }

    /// Replaces the pane's messages with the stored conversation `id`'s.
    fn load_messages(self, id: String) {
        self.messages.set(Vec::new());
        let generation = self.pane_generation.get_value();
        spawn_local(async move {
            let loaded = api::get_conversation(&id).await;
            if self.pane_generation.get_value() != generation {
                return;
            }
            match loaded {
                Ok(conversation) => {
                    let model = conversation.conversation.model;
                    if self
                        .chat_models
                        .with_untracked(|models| models.contains(&model))
                    {
                        self.selected_model.set(model);
                    }
                    let messages = conversation
                        .messages
                        .into_iter()
                        .map(|message| UiMessage {
                            key: self.take_key(),
                            role: Role::parse(&message.role),
                            content: message.content,
                            trace_id: None,
                            vote: None,
                        })
                        .collect();
                    self.messages.set(messages);
                    self.attach_answer_traces(id, generation);
                }
                Err(error) => self.report_error("Could not open the conversation", &error),
            }
        });
    }

    /// Finds the traces (and votes) of the stored answers now in the pane, so they get
    /// feedback buttons too. Best effort: without them the answers just show none.
    fn attach_answer_traces(self, conversation_id: String, generation: u64) {
        let answers: Vec<(u64, String)> = self.messages.with_untracked(|messages| {
            messages
                .iter()
                .filter(|message| message.role == Role::Assistant)
                .map(|message| (message.key, message.content.clone()))
                .collect()
        });
        if answers.is_empty() {
            return;
        }
        spawn_local(async move {
            let texts: Vec<String> = answers.iter().map(|(_, text)| text.clone()).collect();
            let Ok(found) = find_answer_traces(&conversation_id, &texts).await else {
                return;
            };
            if self.pane_generation.get_value() != generation {
                return;
            }
            self.messages.update(|messages| {
                for ((key, _), answer) in answers.iter().zip(found) {
                    let Some(answer) = answer else { continue };
                    if let Some(message) = messages.iter_mut().find(|m| m.key == *key) {
                        message.trace_id = Some(answer.trace_id);
                        message.vote = answer.vote;
                    }
                }
            });
        });
    }

    pub fn delete_conversation(self, id: String) {
        if self.current_id.get_untracked().as_deref() == Some(id.as_str()) {
            self.new_chat();
        }
        spawn_local(async move {
            if let Err(error) = api::delete_conversation(&id).await {
                self.show_error(format!("Could not delete the conversation: {error}"));
            }
            self.refresh_conversations();
        });
    }

    fn refresh_conversations(self) {
        spawn_local(async move {
            match api::list_conversations().await {
                Ok(conversations) => self.conversations.set(conversations),
                Err(error) => self.report_error("Could not load conversations", &error),
            }
        });
    }

    /// Returns the open conversation's id, storing a new conversation first if needed.
    async fn ensure_conversation(
        self,
        first_message: &str,
        model: &str,
        generation: u64,
    ) -> Result<String, ApiError> {
        if let Some(id) = self.current_id.get_untracked() {
            return Ok(id);
        }
        let conversation = api::create_conversation(&title_from(first_message), model).await?;
        if self.pane_generation.get_value() == generation {
            self.current_id.set(Some(conversation.id.clone()));
        }
        let id = conversation.id.clone();
        self.conversations
            .update(|conversations| conversations.insert(0, conversation));
        Ok(id)
    }

    /// Detaches any reply in flight from the pane (stopping it) and clears the error.
    fn leave_pane(self) {
        self.stop();
        self.abort.set_value(None);
        self.pane_generation
            .update_value(|generation| *generation += 1);
        self.streaming_reply.set(None);
        self.error.set(None);
    }

    fn push_message(self, role: Role, content: String) {
        let key = self.take_key();
        self.messages.update(|messages| {
            messages.push(UiMessage {
                key,
                role,
                content,
                trace_id: None,
                vote: None,
            })
        });
    }

    /// An assistant answer from this page, with the trace its call was filed under.
    fn push_answer(self, content: String, trace_id: String) {
        let key = self.take_key();
        self.messages.update(|messages| {
            messages.push(UiMessage {
                key,
                role: Role::Assistant,
                content,
                trace_id: Some(trace_id),
                vote: None,
            })
        });
    }

    fn take_key(self) -> u64 {
        let key = self.next_key.get_value();
        self.next_key.set_value(key + 1);
        key
    }
}

/// The first line of `message`, cut to [`TITLE_CHARS`] characters.
fn title_from(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default().trim();
    let mut title: String = first_line.chars().take(TITLE_CHARS).collect();
    if first_line.chars().count() > TITLE_CHARS {
        title = title.trim_end().to_owned();
        title.push('…');
    }
    if title.is_empty() {
        title = "New chat".to_owned();
    }
    title
}
