//! `POST /v1/completions`: raw text prompts, streamed and not.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::{AppError, AppResult};
use crate::openai::generation::{
    Api, ChoiceEvent, GenerationPlan, collect, completion_logprobs, finish_reason, merge_choices,
    sse_response, unix_now,
};
use crate::openai::json::OpenAiJson;
use crate::openai::types::{CompletionRequest, PromptField, Usage};
use crate::state::AppState;

pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(mut request): OpenAiJson<CompletionRequest>,
) -> AppResult<Response> {
    let models = state.models()?;
    let model = models.chat(&request.model)?;
    if request.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(AppError::bad_request("suffix", "suffix is not supported"));
    }
    if request.best_of.is_some_and(|b| b != 1) {
        return Err(AppError::bad_request("best_of", "best_of is not supported"));
    }
    let (prompt_text, prompt) = match &request.prompt {
        PromptField::Text(text) => (text.clone(), model.text_prompt(text)?),
        PromptField::Texts(texts) if texts.len() == 1 => {
            (texts[0].clone(), model.text_prompt(&texts[0])?)
        }
        PromptField::Tokens(tokens) => (model.tokenizer().decode(tokens)?, tokens.clone()),
        PromptField::TokenLists(lists) if lists.len() == 1 => {
            (model.tokenizer().decode(&lists[0])?, lists[0].clone())
        }
        _ => {
            return Err(AppError::bad_request(
                "prompt",
                "send one prompt per request",
            ));
        }
    };
    if prompt.is_empty() {
        return Err(AppError::bad_request("prompt", "the prompt is empty"));
    }
    let vocab = model.tokenizer().vocab_size() as u32;
    if prompt.iter().any(|&t| t >= vocab) {
        return Err(AppError::bad_request(
            "prompt",
            format!("token ids must be below {vocab}"),
        ));
    }
    let echo = request.echo.unwrap_or(false).then_some(prompt_text);
    let mut plan = GenerationPlan::new(Api::Completions, &model, prompt, request.take_sampling())?;
    let want_logprobs = plan.wants_logprobs();
    let streams = plan.submit(&model)?;
    let n = streams.len();
    let events = merge_choices(streams, state.metrics.clone(), request.model.clone());
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let name = request.model;

    if !plan.stream {
        let collected = collect(n, events).await?;
        let choices: Vec<Value> = collected
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                let prefix = echo.as_deref().unwrap_or_default();
                let logprobs = want_logprobs
                    .then(|| completion_logprobs(&model, &choice.logprobs, prefix.len()));
                json!({
                    "index": index,
                    "text": format!("{prefix}{}", choice.text),
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason,
                })
            })
            .collect();
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": choices,
            "usage": collected.usage,
        }))
        .into_response());
    }

    let include_usage = plan.include_usage;
    let prompt_tokens = plan.prompt_tokens;
    let chunk = move |choices: Value, usage: Option<Usage>| {
        let mut chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = json!(usage);
        }
        chunk
    };
    let echo_len = echo.as_ref().map_or(0, String::len);
    let payloads = async_stream::stream! {
        if let Some(prefix) = echo {
            for index in 0..n {
                yield Ok(chunk(json!([{"index": index, "text": prefix, "logprobs": null, "finish_reason": null}]), None));
            }
        }
        let mut usage = Usage::new(prompt_tokens, 0);
        let mut offsets = vec![echo_len; n];
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(ChoiceEvent::Text(index, text, logprobs)) => {
                    let logprobs = want_logprobs.then(|| completion_logprobs(&model, &logprobs, offsets[index]));
                    offsets[index] += text.len();
                    yield Ok(chunk(json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": null}]), None));
                }
                Ok(ChoiceEvent::Finished(index, completion)) => {
                    usage = usage.add(Usage::new(0, completion.completion_tokens));
                    yield Ok(chunk(json!([{"index": index, "text": "", "logprobs": null, "finish_reason": finish_reason(completion.reason)}]), None));
                }
                Err(error) => {
                    yield Err(error);
                    return;
                }
            }
        }
        if include_usage {
            yield Ok(chunk(json!([]), Some(usage)));
        }
    };
    Ok(sse_response(payloads))
}
