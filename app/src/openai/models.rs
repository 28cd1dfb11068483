//! `GET /v1/models`, with vLLM's `max_model_len` and a `task` field ("generate" or
//! "embed") so the UI can tell chat models from embedders.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::AppResult;
use crate::state::AppState;

pub async fn list_models(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let models = state.models()?;
    let data: Vec<Value> = models
        .listed
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": m.created,
                "owned_by": "agentbox",
                "max_model_len": m.context_length,
                "task": m.task.as_str(),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
