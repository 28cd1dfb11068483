//! `POST /v1/embeddings`: a string or an array of strings, as float arrays or base64.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::error::{AppError, AppResult};
use crate::openai::json::OpenAiJson;
use crate::openai::types::{EmbeddingInput, EmbeddingRequest};
use crate::state::AppState;

const MAX_INPUTS: usize = 2048;
const BATCH: usize = 32;

pub async fn embeddings(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<EmbeddingRequest>,
) -> AppResult<Json<Value>> {
    let models = state.models()?;
    let embedder = models.embedder(&request.model)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(AppError::bad_request(
                "encoding_format",
                format!("{other:?} is not one of \"float\", \"base64\""),
            ));
        }
    };
    if let Some(d) = request.dimensions
        && d != embedder.dimensions() as i64
    {
        return Err(AppError::bad_request(
            "dimensions",
            format!("this model produces {} dimensions", embedder.dimensions()),
        ));
    }
    let texts = match request.input {
        EmbeddingInput::Text(text) => vec![text],
        EmbeddingInput::Texts(texts) => texts,
        EmbeddingInput::Tokens(items) => {
            return Err(AppError::bad_request(
                "input",
                format!(
                    "token arrays ({} items) are not supported; send text",
                    items.len()
                ),
            ));
        }
    };
    if texts.is_empty() {
        return Err(AppError::bad_request("input", "must not be empty"));
    }
    if texts.len() > MAX_INPUTS {
        return Err(AppError::bad_request(
            "input",
            format!("at most {MAX_INPUTS} inputs per request"),
        ));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(AppError::bad_request(
            format!("input[{i}]"),
            "must not be an empty string",
        ));
    }
    let (vectors, prompt_tokens) = tokio::task::spawn_blocking(move || {
        let mut tokens = 0;
        for text in &texts {
            tokens += embedder.count_tokens(text)?;
        }
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            vectors.extend(embedder.embed(batch)?);
        }
        Ok::<_, engine::EngineError>((vectors, tokens))
    })
    .await
    .map_err(|e| AppError::Internal(anyhow::anyhow!("embedding task failed: {e}")))??;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}
