//! `GET /v1/models`, with vLLM's `max_model_len` and a `task` field ("generate" or
//! "embed") so the UI can tell chat models from embedders; gateway models follow the local
//! ones, `owned_by: "gateway"`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::AppResult;
use crate::state::AppState;

pub async fn list_models(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let models = state.models()?;
    let mut data: Vec<Value> = models
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
    if let Some(gateway) = &state.gateway {
        let mut names: Vec<&str> = gateway.model_names().collect();
        names.sort_unstable();
        data.extend(names.into_iter().map(|name| {
            json!({"id": name, "object": "model", "created": 0, "owned_by": "gateway", "task": "generate"})
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}
