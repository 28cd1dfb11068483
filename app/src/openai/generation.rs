//! What chat and completions share: turning OpenAI sampling fields into engine requests
//! (one per choice, `n`), running them, recording metrics, and the SSE framing.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use engine::sampling::MAX_TOP_LOGPROBS;
use engine::{
    ChatModel, Completion, FinishReason, GenerationEvent, GenerationRequest, GenerationStream,
    SamplingParams, TokenLogprob,
};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::{AppError, AppResult};
use crate::metrics::{GenerationRecord, Metrics};
use crate::openai::types::{SamplingFields, StopField, Usage};

const MAX_CHOICES: i64 = 16;

/// Validated generation settings for one request.
pub struct GenerationPlan {
    pub requests: Vec<GenerationRequest>,
    pub stream: bool,
    pub include_usage: bool,
    /// Prompt tokens over all prompts (each counted once, whatever `n`).
    pub prompt_tokens: usize,
    pub choices_per_prompt: usize,
}

/// Chat and completions spell the logprobs request differently.
#[derive(Debug, Clone, Copy)]
pub enum Api {
    /// `logprobs: bool` plus `top_logprobs: int`.
    Chat,
    /// `logprobs: int`, the number of alternatives.
    Completions,
}

fn logprobs_request(api: Api, fields: &SamplingFields) -> AppResult<Option<usize>> {
    let count = |param: &str, value: &Value| -> AppResult<usize> {
        value
            .as_u64()
            .filter(|&n| n <= MAX_TOP_LOGPROBS as u64)
            .map(|n| n as usize)
            .ok_or_else(|| {
                AppError::bad_request(
                    param,
                    format!("must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
                )
            })
    };
    let logprobs = fields.logprobs.as_ref().filter(|v| !v.is_null());
    let top = fields.top_logprobs.as_ref().filter(|v| !v.is_null());
    match api {
        Api::Chat => {
            let wanted = match logprobs {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => return Err(AppError::bad_request("logprobs", "must be a boolean")),
            };
            match (wanted, top) {
                (false, Some(_)) => Err(AppError::bad_request(
                    "top_logprobs",
                    "requires `logprobs: true`",
                )),
                (false, None) => Ok(None),
                (true, None) => Ok(Some(0)),
                (true, Some(top)) => count("top_logprobs", top).map(Some),
            }
        }
        Api::Completions => logprobs.map(|v| count("logprobs", v)).transpose(),
    }
}

impl GenerationPlan {
    pub fn new(
        api: Api,
        model: &ChatModel,
        prompts: Vec<Vec<u32>>,
        fields: SamplingFields,
    ) -> AppResult<Self> {
        let logprobs = logprobs_request(api, &fields)?;
        let n = fields.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(AppError::bad_request(
                "n",
                format!("must be between 1 and {MAX_CHOICES}"),
            ));
        }
        let (max_field, max_value) = match (fields.max_completion_tokens, fields.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", Some(v)),
            (None, v) => ("max_tokens", v),
        };
        let max_new_tokens = match max_value {
            Some(v) if v < 1 => {
                return Err(AppError::bad_request(max_field, "must be at least 1"));
            }
            Some(v) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
            // Whatever room each prompt leaves in the context window.
            None => None,
        };
        let top_k = match fields.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(_) => return Err(AppError::bad_request("top_k", "must be -1, 0 or positive")),
        };
        // Negative seeds are accepted and reinterpreted, as vLLM does with Python ints.
        let seed = fields.seed.map(|s| s as u64);
        let sampling = SamplingParams {
            temperature: fields.temperature.unwrap_or(1.0),
            top_p: fields.top_p.unwrap_or(1.0),
            top_k,
            min_p: fields.min_p.unwrap_or(0.0),
            seed,
            presence_penalty: fields.presence_penalty.unwrap_or(0.0),
            frequency_penalty: fields.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: fields.repetition_penalty.unwrap_or(1.0),
            logprobs,
        };
        let stop = match fields.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        // Choice `p * n + i` is choice `i` of prompt `p`, as OpenAI numbers them.
        let mut requests = Vec::with_capacity(prompts.len() * n as usize);
        for prompt in prompts {
            let group = (n > 1).then(rand_group_id);
            let max_new_tokens =
                max_new_tokens.unwrap_or_else(|| model.room_after(prompt.len()).max(1));
            for i in 0..n as u64 {
                let mut sampling = sampling.clone();
                // Choices of one seeded request differ from each other, yet repeat exactly.
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(i));
                requests.push(GenerationRequest {
                    prompt: prompt.clone(),
                    max_new_tokens,
                    sampling,
                    stop: stop.clone(),
                    ignore_eos: fields.ignore_eos,
                    group,
                });
            }
        }
        Ok(Self {
            requests,
            stream: fields.stream,
            include_usage: fields
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            prompt_tokens,
            choices_per_prompt: n as usize,
        })
    }

    pub fn wants_logprobs(&self) -> bool {
        self.requests
            .first()
            .is_some_and(|r| r.sampling.logprobs.is_some())
    }

    /// Queues every choice. If one is refused, the error is returned and the streams
    /// already queued are dropped, which cancels them.
    pub fn submit(&mut self, model: &ChatModel) -> AppResult<Vec<GenerationStream>> {
        let mut streams = Vec::with_capacity(self.requests.len());
        for request in self.requests.drain(..) {
            streams.push(model.generate(request)?);
        }
        Ok(streams)
    }
}

/// Identifies the choices of one request to the scheduler.
fn rand_group_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        // An aborted sequence (server shutdown) was cut short, like a length limit.
        FinishReason::Length | FinishReason::Aborted => "length",
    }
}

/// One event of one choice.
pub enum ChoiceEvent {
    Text(usize, String, Vec<TokenLogprob>),
    Finished(usize, Completion),
}

/// Merges the choices' streams, recording metrics as each one finishes. An engine failure
/// ends the stream with an error.
/// The engine's own account of a local generation (queue, prefill, decode, prefix-cache
/// hits), filled when it finishes; attached to the response for the call's trace.
#[derive(Clone, Default)]
pub struct EngineReport(Arc<parking_lot::Mutex<Option<Completion>>>);

impl EngineReport {
    /// The first finished choice's account, once there is one.
    pub fn get(&self) -> Option<Completion> {
        self.0.lock().clone()
    }

    fn record(&self, completion: &Completion) {
        self.0.lock().get_or_insert_with(|| completion.clone());
    }
}

pub fn merge_choices(
    streams: Vec<GenerationStream>,
    metrics: Arc<Metrics>,
    model: String,
    report: EngineReport,
) -> impl Stream<Item = Result<ChoiceEvent, AppError>> + Send + 'static {
    let tagged = streams.into_iter().enumerate().map(|(index, stream)| {
        UnboundedReceiverStream::new(stream).map(move |event| (index, event))
    });
    futures::stream::select_all(tagged).map(move |(index, event)| match event {
        GenerationEvent::Text { text, logprobs } => Ok(ChoiceEvent::Text(index, text, logprobs)),
        GenerationEvent::Finished(completion) => {
            report.record(&completion);
            metrics.record_generation(&GenerationRecord {
                model: &model,
                prompt_tokens: completion.prompt_tokens,
                completion_tokens: completion.completion_tokens,
                queued: completion.timings.queued,
                first_token: completion.timings.first_token,
                total: completion.timings.total,
                finish_reason: finish_reason(completion.reason),
            });
            Ok(ChoiceEvent::Finished(index, completion))
        }
        GenerationEvent::Failed(error) => Err(AppError::from(error)),
    })
}

/// Collected output of a non-streamed request.
pub struct Collected {
    pub choices: Vec<CollectedChoice>,
    pub usage: Usage,
}

pub struct CollectedChoice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: &'static str,
}

pub async fn collect(
    n: usize,
    prompt_tokens: usize,
    events: impl Stream<Item = Result<ChoiceEvent, AppError>>,
) -> AppResult<Collected> {
    let mut choices: Vec<CollectedChoice> = (0..n)
        .map(|_| CollectedChoice {
            text: String::new(),
            logprobs: Vec::new(),
            finish_reason: "length",
        })
        .collect();
    let mut completion_tokens = 0;
    let mut finished = 0;
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event? {
            ChoiceEvent::Text(i, text, logprobs) => {
                choices[i].text.push_str(&text);
                choices[i].logprobs.extend(logprobs);
            }
            ChoiceEvent::Finished(i, completion) => {
                choices[i].finish_reason = finish_reason(completion.reason);
                completion_tokens += completion.completion_tokens;
                finished += 1;
            }
        }
    }
    if finished < n {
        return Err(AppError::Unavailable {
            message: "the engine stopped before the generation finished".into(),
            retry_after_secs: 5,
        });
    }
    Ok(Collected {
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    })
}

/// How one API spells its streamed choice entries; the framing around them is shared.
pub trait ChoiceChunks: Send + 'static {
    /// The entry that opens choice `index`, if the API sends one.
    fn opening(&self, index: usize) -> Option<Value>;
    fn text(&mut self, index: usize, text: String, logprobs: &[TokenLogprob]) -> Value;
    fn finish(&self, index: usize, reason: &'static str) -> Value;
}

/// The fields every chunk of one streamed response carries.
pub struct ChunkFrame {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl ChunkFrame {
    fn chunk(&self, choices: Value, usage: Option<Usage>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = json!(usage);
        }
        chunk
    }
}

/// Streams `n` choices as SSE: opening entries, one chunk per text delta and per finish,
/// then (if asked) a final chunk with the usage and no choices.
pub fn stream_choices(
    frame: ChunkFrame,
    n: usize,
    prompt_tokens: usize,
    events: impl Stream<Item = Result<ChoiceEvent, AppError>> + Send + 'static,
    mut style: impl ChoiceChunks,
) -> Response {
    let payloads = async_stream::stream! {
        for index in 0..n {
            if let Some(entry) = style.opening(index) {
                yield Ok(frame.chunk(json!([entry]), None));
            }
        }
        let mut usage = Usage::new(prompt_tokens, 0);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(ChoiceEvent::Text(index, text, logprobs)) => {
                    yield Ok(frame.chunk(json!([style.text(index, text, &logprobs)]), None));
                }
                Ok(ChoiceEvent::Finished(index, completion)) => {
                    usage = usage.add(Usage::new(0, completion.completion_tokens));
                    let entry = style.finish(index, finish_reason(completion.reason));
                    yield Ok(frame.chunk(json!([entry]), None));
                }
                Err(error) => {
                    yield Err(error);
                    return;
                }
            }
        }
        if frame.include_usage {
            yield Ok(frame.chunk(json!([]), Some(usage)));
        }
    };
    sse_response(payloads)
}

/// Frames JSON payloads as `data:` events and ends with `data: [DONE]`. An error mid-way
/// becomes a final `data: {"error": ...}` event, as OpenAI does.
fn sse_response(
    payloads: impl Stream<Item = Result<serde_json::Value, AppError>> + Send + 'static,
) -> Response {
    let events = payloads
        .map(|payload| {
            let value = match payload {
                Ok(value) => value,
                Err(error) => error_payload(error),
            };
            Ok::<Event, Infallible>(Event::default().data(value.to_string()))
        })
        .chain(futures::stream::once(async {
            Ok::<Event, Infallible>(Event::default().data("[DONE]"))
        }));
    Sse::new(events).into_response()
}

/// Chat's `logprobs.content` entries.
pub fn chat_logprobs(model: &ChatModel, logprobs: &[TokenLogprob]) -> Value {
    let entry = |token: u32, logprob: f32| {
        let text = token_text(model, token);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = logprobs
        .iter()
        .map(|lp| {
            let mut item = entry(lp.token, lp.logprob);
            item["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            item
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs` object; `offset` is where this part's text starts in the choice.
pub fn completion_logprobs(
    model: &ChatModel,
    logprobs: &[TokenLogprob],
    mut offset: usize,
) -> Value {
    let mut tokens = Vec::with_capacity(logprobs.len());
    let mut token_logprobs = Vec::with_capacity(logprobs.len());
    let mut top_logprobs = Vec::with_capacity(logprobs.len());
    let mut text_offset = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        let text = token_text(model, lp.token);
        text_offset.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(lp.logprob);
        let top: serde_json::Map<String, Value> = lp
            .top
            .iter()
            .map(|&(t, l)| (token_text(model, t), json!(l)))
            .collect();
        top_logprobs.push(Value::Object(top));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

fn token_text(model: &ChatModel, token: u32) -> String {
    model.tokenizer().decode(&[token]).unwrap_or_default()
}

fn error_payload(error: AppError) -> serde_json::Value {
    let message = match &error {
        AppError::Internal(e) => {
            tracing::error!(error = format!("{e:#}"), "generation failed mid-stream");
            "internal server error".to_string()
        }
        other => other.to_string(),
    };
    serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
