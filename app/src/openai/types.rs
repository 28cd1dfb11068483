//! OpenAI request and response wire types (plus vLLM's sampling extensions: `top_k`,
//! `min_p`, `repetition_penalty`, `ignore_eos`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<i64>,
    pub ignore_eos: bool,
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<serde_json::Value>,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// Declares a request struct with the sampling fields inline (not `#[serde(flatten)]`, which
/// would hide the path of a bad field from the error message).
macro_rules! request_with_sampling {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        pub struct $name {
            $(pub $field: $ty,)*
            pub max_tokens: Option<i64>,
            pub max_completion_tokens: Option<i64>,
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub top_k: Option<i64>,
            pub min_p: Option<f32>,
            pub seed: Option<i64>,
            pub stop: Option<StopField>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub repetition_penalty: Option<f32>,
            pub n: Option<i64>,
            #[serde(default)]
            pub ignore_eos: bool,
            pub logprobs: Option<serde_json::Value>,
            pub top_logprobs: Option<serde_json::Value>,
            #[serde(default)]
            pub stream: bool,
            pub stream_options: Option<StreamOptions>,
        }

        impl $name {
            pub fn take_sampling(&mut self) -> SamplingFields {
                SamplingFields {
                    max_tokens: self.max_tokens.take(),
                    max_completion_tokens: self.max_completion_tokens.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    top_k: self.top_k.take(),
                    min_p: self.min_p.take(),
                    seed: self.seed.take(),
                    stop: self.stop.take(),
                    presence_penalty: self.presence_penalty.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    repetition_penalty: self.repetition_penalty.take(),
                    n: self.n.take(),
                    ignore_eos: self.ignore_eos,
                    logprobs: self.logprobs.take(),
                    top_logprobs: self.top_logprobs.take(),
                    stream: self.stream,
                    stream_options: self.stream_options.take(),
                }
            }
        }
    };
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    pub content: Option<MessageContent>,
}

request_with_sampling! {
    pub struct ChatCompletionRequest {
        model: String,
        messages: Vec<ChatMessageIn>,
        tools: Option<serde_json::Value>,
        response_format: Option<serde_json::Value>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

request_with_sampling! {
    pub struct CompletionRequest {
        model: String,
        prompt: PromptField,
        echo: Option<bool>,
        suffix: Option<String>,
        best_of: Option<i64>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    /// Token ids (`[1, 2]` or `[[1, 2]]`): accepted by the schema, refused by the handler.
    Tokens(Vec<serde::de::IgnoredAny>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    pub fn add(self, other: Usage) -> Usage {
        Usage::new(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )
    }
}
