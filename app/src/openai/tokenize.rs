//! vLLM's `POST /tokenize` and `POST /detokenize`: the model's own tokenizer (and chat
//! template) over HTTP.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{AppError, AppResult};
use crate::openai::chat::convert_messages;
use crate::openai::json::OpenAiJson;
use crate::openai::types::ChatMessageIn;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessageIn>>,
    add_special_tokens: Option<bool>,
    #[serde(default)]
    return_token_strs: bool,
}

#[derive(Deserialize)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<i64>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<TokenizeRequest>,
) -> AppResult<Json<Value>> {
    let models = state.models()?;
    let model = models.chat_or_default(request.model.as_deref())?;
    let tokens = match (&request.prompt, &request.messages) {
        (Some(prompt), None) => {
            if request.add_special_tokens.unwrap_or(true) {
                model.text_prompt(prompt)?
            } else {
                model.tokenizer().encode(prompt)?
            }
        }
        (None, Some(messages)) => model.chat_prompt(&convert_messages(messages)?)?,
        _ => {
            return Err(AppError::bad_request(
                "prompt",
                "send either `prompt` or `messages`",
            ));
        }
    };
    let token_strs = request.return_token_strs.then(|| {
        tokens
            .iter()
            .map(|&t| model.tokenizer().token_text(t).unwrap_or_default())
            .collect::<Vec<_>>()
    });
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": model.context_length(),
        "tokens": tokens,
        "token_strs": token_strs,
    })))
}

pub async fn detokenize(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<DetokenizeRequest>,
) -> AppResult<Json<Value>> {
    let models = state.models()?;
    let model = models.chat_or_default(request.model.as_deref())?;
    let vocab = model.tokenizer().vocab_size();
    let ids = request
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    AppError::bad_request(
                        format!("tokens[{i}]"),
                        format!("{t} is not a token id (the vocabulary has {vocab})"),
                    )
                })
        })
        .collect::<AppResult<Vec<u32>>>()?;
    Ok(Json(json!({ "prompt": model.tokenizer().decode(&ids)? })))
}
