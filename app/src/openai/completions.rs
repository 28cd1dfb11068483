//! `POST /v1/completions`: raw text prompts, streamed and not.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use engine::{ChatModel, TokenLogprob};
use serde_json::{Value, json};

use crate::error::{AppError, AppResult};
use crate::openai::generation::{
    Api, ChoiceChunks, ChunkFrame, EngineReport, GenerationPlan, collect, completion_logprobs,
    merge_choices, stream_choices, unix_now,
};
use crate::openai::json::OpenAiJson;
use crate::openai::types::{CompletionRequest, PromptField};
use crate::state::AppState;

/// Prompts in one batched request.
const MAX_PROMPTS: usize = 64;

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
    // One prompt, or a batch: text or token ids, each paired with its text for `echo`.
    let prompts: Vec<(String, Vec<u32>)> = match &request.prompt {
        PromptField::Text(text) => vec![(text.clone(), model.text_prompt(text)?)],
        PromptField::Texts(texts) => texts
            .iter()
            .map(|text| Ok((text.clone(), model.text_prompt(text)?)))
            .collect::<AppResult<_>>()?,
        PromptField::Tokens(tokens) => vec![(model.tokenizer().decode(tokens)?, tokens.clone())],
        PromptField::TokenLists(lists) => lists
            .iter()
            .map(|ids| Ok((model.tokenizer().decode(ids)?, ids.clone())))
            .collect::<AppResult<_>>()?,
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(AppError::bad_request(
            "prompt",
            format!("send from 1 to {MAX_PROMPTS} prompts"),
        ));
    }
    let vocab = model.tokenizer().vocab_size() as u32;
    for (i, (_, ids)) in prompts.iter().enumerate() {
        if ids.is_empty() {
            return Err(AppError::bad_request(
                format!("prompt[{i}]"),
                "the prompt is empty",
            ));
        }
        if ids.iter().any(|&t| t >= vocab) {
            return Err(AppError::bad_request(
                format!("prompt[{i}]"),
                format!("token ids must be below {vocab}"),
            ));
        }
    }
    let (texts, ids): (Vec<String>, Vec<Vec<u32>>) = prompts.into_iter().unzip();
    let echo = request.echo.unwrap_or(false).then_some(texts);
    let mut plan = GenerationPlan::new(Api::Completions, &model, ids, request.take_sampling())?;
    let per_prompt = plan.choices_per_prompt;
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
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let name = request.model;

    if !plan.stream {
        let collected = collect(n, plan.prompt_tokens, events).await?;
        let choices: Vec<Value> = collected
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, choice)| {
                let prefix = echo
                    .as_ref()
                    .map_or("", |texts| texts[index / per_prompt].as_str());
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
        let mut response = Json(json!({
            "id": id,
            "object": "text_completion",
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
        object: "text_completion",
        created,
        model: name,
        include_usage: plan.include_usage,
    };
    let style = CompletionChunks {
        offsets: (0..n)
            .map(|index| {
                echo.as_ref()
                    .map_or(0, |texts| texts[index / per_prompt].len())
            })
            .collect(),
        echo,
        per_prompt,
        model,
        want_logprobs,
    };
    let mut response = stream_choices(frame, n, plan.prompt_tokens, events, style);
    response.extensions_mut().insert(report);
    Ok(response)
}

struct CompletionChunks {
    /// Each prompt's text, when `echo` asked for it.
    echo: Option<Vec<String>>,
    per_prompt: usize,
    /// Where each choice's next text starts, for `logprobs.text_offset`.
    offsets: Vec<usize>,
    model: Arc<ChatModel>,
    want_logprobs: bool,
}

impl ChoiceChunks for CompletionChunks {
    fn opening(&self, index: usize) -> Option<Value> {
        let prefix = &self.echo.as_ref()?[index / self.per_prompt];
        Some(json!({"index": index, "text": prefix, "logprobs": null, "finish_reason": null}))
    }

    fn text(&mut self, index: usize, text: String, logprobs: &[TokenLogprob]) -> Value {
        let logprobs = self
            .want_logprobs
            .then(|| completion_logprobs(&self.model, logprobs, self.offsets[index]));
        self.offsets[index] += text.len();
        json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null})
    }

    fn finish(&self, index: usize, reason: &'static str) -> Value {
        json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
    }
}
