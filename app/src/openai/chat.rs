//! `POST /v1/chat/completions`, streamed and not.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use engine::{ChatMessage, ChatModel, TokenLogprob};
use serde_json::{Value, json};

use crate::error::{AppError, AppResult};
use crate::openai::generation::{
    Api, ChoiceChunks, ChunkFrame, EngineReport, GenerationPlan, chat_logprobs, collect,
    merge_choices, stream_choices, unix_now,
};
use crate::openai::json::OpenAiJson;
use crate::openai::types::{ChatCompletionRequest, ChatMessageIn, MessageContent};
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(mut request): OpenAiJson<ChatCompletionRequest>,
) -> AppResult<Response> {
    let models = state.models()?;
    let model = models.chat(&request.model)?;
    if request.messages.is_empty() {
        return Err(AppError::bad_request(
            "messages",
            "must contain at least one message",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(AppError::bad_request(
            "tools",
            "tool calling is not supported by local models yet",
        ));
    }
    if let Some(format) = &request.response_format
        && format
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
    {
        return Err(AppError::bad_request(
            "response_format",
            "only {\"type\": \"text\"} is supported yet",
        ));
    }
    let messages = convert_messages(&request.messages)?;
    let prompt = model.chat_prompt(&messages)?;
    let mut plan = GenerationPlan::new(Api::Chat, &model, vec![prompt], request.take_sampling())?;
    let want_logprobs = plan.wants_logprobs();
    let streams = plan.submit(&model)?;
    let n = streams.len();
    let report = EngineReport::default();
    let events = merge_choices(
        streams,
        state.metrics.clone(),
        request.model.clone(),
        report.clone(),
    );
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let name = request.model;

    if !plan.stream {
        let collected = collect(n, plan.prompt_tokens, events).await?;
        let choices: Vec<Value> = collected
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                let logprobs = want_logprobs.then(|| chat_logprobs(&model, &choice.logprobs));
                json!({
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text},
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                })
            })
            .collect();
        let mut response = Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": choices,
            "usage": collected.usage,
        }))
        .into_response();
        response.extensions_mut().insert(report);
        return Ok(response);
    }

    let frame = ChunkFrame {
        id,
        object: "chat.completion.chunk",
        created,
        model: name,
        include_usage: plan.include_usage,
    };
    let style = ChatChunks {
        model,
        want_logprobs,
    };
    let mut response = stream_choices(frame, n, plan.prompt_tokens, events, style);
    response.extensions_mut().insert(report);
    Ok(response)
}

struct ChatChunks {
    model: Arc<ChatModel>,
    want_logprobs: bool,
}

impl ChoiceChunks for ChatChunks {
    fn opening(&self, index: usize) -> Option<Value> {
        Some(
            json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
        )
    }

    fn text(&mut self, index: usize, text: String, logprobs: &[TokenLogprob]) -> Value {
        let logprobs = self
            .want_logprobs
            .then(|| chat_logprobs(&self.model, logprobs));
        json!({"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null})
    }

    fn finish(&self, index: usize, reason: &'static str) -> Value {
        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
    }
}

pub fn convert_messages(messages: &[ChatMessageIn]) -> AppResult<Vec<ChatMessage>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| convert_message(i, m))
        .collect()
}

fn convert_message(index: usize, message: &ChatMessageIn) -> AppResult<ChatMessage> {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(AppError::bad_request(
                format!("messages[{index}].role"),
                format!(
                    "unsupported role {other:?}; expected system, developer, user or assistant"
                ),
            ));
        }
    };
    let content = match &message.content {
        None => String::new(),
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (p, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    _ => {
                        return Err(AppError::bad_request(
                            format!("messages[{index}].content[{p}]"),
                            format!(
                                "content parts of type {:?} are not supported; only text",
                                part.kind
                            ),
                        ));
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}
