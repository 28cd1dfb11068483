//! The engine's one error type, with a class the HTTP edge maps to a status code.

use std::path::PathBuf;

/// What kind of failure this is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong (too long, bad parameter).
    BadInput,
    /// The engine is full or shutting down; try again later.
    Overloaded,
    /// A bug or a broken model file.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("reading model file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model {path}: {message}")]
    BadModel { path: PathBuf, message: String },
    #[error("tensor operation failed")]
    Tensor(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error(
        "this request needs {requested} tokens ({prompt} in the prompt plus {max_new} to generate), but the model's context window is {limit} tokens"
    )]
    ContextLengthExceeded {
        prompt: usize,
        max_new: usize,
        requested: usize,
        limit: usize,
    },
    #[error(
        "this request needs {requested} tokens of KV cache, but the whole cache holds {capacity}; raise engine.kv_cache_bytes"
    )]
    KvCapacityExceeded { requested: usize, capacity: usize },
    #[error("input is too long: {len} tokens, the model accepts at most {limit}")]
    InputTooLong { len: usize, limit: usize },
    #[error("invalid parameter `{param}`: {message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },
    #[error("the engine queue is full ({limit} requests waiting)")]
    QueueFull { limit: usize },
    #[error("forward pass failed: {0}")]
    ForwardFailed(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("the engine has stopped")]
    Stopped,
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::ContextLengthExceeded { .. }
            | EngineError::KvCapacityExceeded { .. }
            | EngineError::InputTooLong { .. }
            | EngineError::InvalidParameter { .. } => ErrorClass::BadInput,
            EngineError::QueueFull { .. } | EngineError::Stopped => ErrorClass::Overloaded,
            EngineError::Io { .. }
            | EngineError::BadModel { .. }
            | EngineError::Tensor(_)
            | EngineError::ForwardFailed(_)
            | EngineError::Gpu(_)
            | EngineError::Tokenizer(_)
            | EngineError::ChatTemplate(_) => ErrorClass::Internal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Overloaded
    }

    pub(crate) fn bad_model(path: &std::path::Path, message: impl Into<String>) -> Self {
        EngineError::BadModel {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
