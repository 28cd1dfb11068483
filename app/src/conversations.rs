//! `/api/conversations`: the chat history the web UI keeps on the server.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use crate::error::{AppError, AppResult};
use crate::openai::json::OpenAiJson;
use crate::state::AppState;
use crate::store::{Conversation, ConversationWithMessages, StoredMessage};

const MAX_TITLE_CHARS: usize = 200;

#[derive(Deserialize)]
pub struct NewConversation {
    #[serde(default)]
    title: String,
    model: String,
}

#[derive(Deserialize)]
pub struct NewMessage {
    role: String,
    content: String,
}

pub async fn list(State(state): State<AppState>) -> AppResult<Json<Vec<Conversation>>> {
    Ok(Json(state.store.list_conversations().await?))
}

pub async fn create(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<NewConversation>,
) -> AppResult<(StatusCode, Json<Conversation>)> {
    let title: String = match body.title.trim() {
        "" => "New chat".to_string(),
        t => t.chars().take(MAX_TITLE_CHARS).collect(),
    };
    let conversation = state.store.create_conversation(title, body.model).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Json<ConversationWithMessages>> {
    state
        .store
        .conversation(id.clone())
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("no conversation {id}")))
}

pub async fn add_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OpenAiJson(body): OpenAiJson<NewMessage>,
) -> AppResult<(StatusCode, Json<StoredMessage>)> {
    if !matches!(body.role.as_str(), "system" | "user" | "assistant") {
        return Err(AppError::bad_request(
            "role",
            "must be system, user or assistant",
        ));
    }
    state
        .store
        .add_message(id.clone(), body.role, body.content)
        .await?
        .map(|m| (StatusCode::CREATED, Json(m)))
        .ok_or_else(|| AppError::NotFound(format!("no conversation {id}")))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    if state.store.delete_conversation(id.clone()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound(format!("no conversation {id}")))
    }
}
