//! Thumbs up / down under an assistant answer, stored as the BOOLEAN score
//! `user-feedback` (1 or 0) on the answer's trace through `POST /api/public/scores`.
//!
//! The chat names each call's trace itself ([`new_trace_id`], sent as `metadata.trace_id`)
//! so the score can find it. The score's id is derived from the trace's, so changing the
//! vote replaces the score instead of adding a second one, and a reopened conversation
//! finds its answers' traces and votes again ([`find_answer_traces`]).

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::Value;

use crate::api::ApiError;
use crate::traces_api::{self, NewScore, TraceFilters, TraceSummary};

pub const FEEDBACK_SCORE: &str = "user-feedback";

/// A fresh trace id: 32 random hex digits (a v4 UUID without dashes, as the server makes
/// its own), from `crypto.getRandomValues` where the browser has it.
pub fn new_trace_id() -> String {
    let mut bytes = [0_u8; 16];
    let from_crypto = web_sys::window()
        .and_then(|window| window.crypto().ok())
        .is_some_and(|crypto| crypto.get_random_values_with_u8_array(&mut bytes).is_ok());
    if !from_crypto {
        for byte in &mut bytes {
            *byte = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The most traces read back for one conversation (the API's page size).
const MAX_SESSION_TRACES: u64 = 1000;

fn score_id(trace_id: &str) -> String {
    format!("{trace_id}-{FEEDBACK_SCORE}")
}

/// A stored answer's trace, and the vote on it (`Some(true)` for thumbs up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerTrace {
    pub trace_id: String,
    pub vote: Option<bool>,
}

/// Finds the traces that wrote a stored conversation's `answers` (in order): the traces
/// of the conversation's session, oldest first, matched by the text they output. An
/// answer without a match (the server kept no bodies, or the trace is gone) gets `None`.
pub async fn find_answer_traces(
    conversation_id: &str,
    answers: &[String],
) -> Result<Vec<Option<AnswerTrace>>, ApiError> {
    let filters = TraceFilters {
        session_id: conversation_id.to_owned(),
        ..TraceFilters::default()
    };
    let mut traces = traces_api::list_traces(&filters, 1, MAX_SESSION_TRACES)
        .await?
        .data;
    traces.reverse();
    let mut next = 0;
    let mut found = Vec::with_capacity(answers.len());
    for answer in answers {
        let matched = traces
            .iter()
            .enumerate()
            .skip(next)
            .find(|(_, trace)| answer_text(trace) == Some(answer.as_str()));
        let Some((index, trace)) = matched else {
            found.push(None);
            continue;
        };
        next = index + 1;
        let voted = trace.scores.contains(&score_id(&trace.id));
        let vote = if voted {
            // The list names the score; its value is on the trace.
            traces_api::get_trace(&trace.id)
                .await
                .ok()
                .and_then(|detail| {
                    detail
                        .scores
                        .iter()
                        .find(|score| {
                            score.name == FEEDBACK_SCORE && score.observation_id.is_none()
                        })
                        .and_then(|score| score.value)
                        .map(|value| value != 0.0)
                })
        } else {
            None
        };
        found.push(Some(AnswerTrace {
            trace_id: trace.id.clone(),
            vote,
        }));
    }
    Ok(found)
}

/// The assistant text a chat trace output (`{"role": "assistant", "content": …}`).
fn answer_text(trace: &TraceSummary) -> Option<&str> {
    match &trace.output {
        Value::Object(message) => message.get("content").and_then(Value::as_str),
        Value::String(text) => Some(text),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vote {
    Up,
    Down,
}

impl Vote {
    fn value(self) -> f64 {
        match self {
            Vote::Up => 1.0,
            Vote::Down => 0.0,
        }
    }
}

#[component]
pub fn FeedbackButtons(
    trace_id: String,
    /// The vote already stored (`Some(true)` for thumbs up).
    initial: Option<bool>,
) -> impl IntoView {
    let chosen = RwSignal::new(initial.map(|up| if up { Vote::Up } else { Vote::Down }));
    let sending = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let trace_id = StoredValue::new(trace_id);
    let vote = move |vote: Vote| {
        if sending.get_untracked() || chosen.get_untracked() == Some(vote) {
            return;
        }
        let previous = chosen.get_untracked();
        // Shown at once; put back if the server refuses.
        chosen.set(Some(vote));
        sending.set(true);
        error.set(None);
        spawn_local(async move {
            let trace_id = trace_id.get_value();
            let score_id = score_id(&trace_id);
            let answer = traces_api::create_score(&NewScore {
                id: &score_id,
                trace_id: &trace_id,
                name: FEEDBACK_SCORE,
                value: vote.value(),
                data_type: "BOOLEAN",
            })
            .await;
            // The message may be gone (another conversation opened): writes then do nothing.
            let _ = sending.try_set(false);
            if let Err(refusal) = answer {
                let _ = chosen.try_set(previous);
                let _ = error.try_set(Some(format!("Feedback not saved: {refusal}")));
            }
        });
    };
    let button = move |this: Vote, label: &'static str, test_id: &'static str| {
        let pressed = move || chosen.get() == Some(this);
        view! {
            <button
                type="button"
                class="feedback-button"
                class:chosen=pressed
                class:down={this == Vote::Down}
                title=label
                aria-label=label
                aria-pressed=move || pressed().to_string()
                data-testid=test_id
                prop:disabled=move || sending.get()
                on:click=move |_| vote(this)
            >
                // A thumb (drawn, not an emoji: not every system has an emoji font).
                <svg viewBox="0 0 24 24" aria-hidden="true">
                    <path d="M7 10v11H4a1 1 0 0 1-1-1v-9a1 1 0 0 1 1-1h3zm0 0l4-8a3 3 0 0 1 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.4 8.5A2 2 0 0 1 18.1 21H7" />
                </svg>
            </button>
        }
    };
    view! {
        <div class="feedback" data-testid="feedback" data-trace-id=trace_id.get_value()>
            {button(Vote::Up, "Good answer", "thumbs-up")}
            {button(Vote::Down, "Bad answer", "thumbs-down")}
            <Show when={move || chosen.get().is_some() && !sending.get()}>
                <span class="feedback-note" data-testid="feedback-saved">"Thanks for the feedback"</span>
            </Show>
            {move || error.get().map(|message| view! { <span class="feedback-error" role="alert">{message}</span> })}
        </div>
    }
}
