//! `AppError`: every failure at the HTTP edge, rendered in OpenAI's error shape
//! `{"error":{"message","type","param","code"}}` with the matching status code.
//! Internal errors are logged here once and reach the client without detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::{EngineError, ErrorClass};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn models_loading() -> Self {
        AppError::Unavailable {
            message: "models are still loading; retry shortly".into(),
            retry_after_secs: 2,
        }
    }
}

impl From<EngineError> for AppError {
    fn from(error: EngineError) -> Self {
        match (&error, error.class()) {
            (EngineError::ContextLengthExceeded { .. }, _) => AppError::BadRequest {
                message: error.to_string(),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            },
            (EngineError::InputTooLong { .. }, _) => AppError::BadRequest {
                message: error.to_string(),
                param: Some("input".into()),
                code: Some("context_length_exceeded"),
            },
            (EngineError::InvalidParameter { param, .. }, _) => AppError::BadRequest {
                param: Some((*param).to_string()),
                message: error.to_string(),
                code: None,
            },
            (EngineError::QueueFull { .. }, _) => AppError::TooManyRequests {
                message: error.to_string(),
                retry_after_secs: 1,
            },
            (_, ErrorClass::Overloaded) => AppError::Unavailable {
                message: error.to_string(),
                retry_after_secs: 5,
            },
            (_, ErrorClass::BadInput) => AppError::BadRequest {
                message: error.to_string(),
                param: None,
                code: None,
            },
            (_, ErrorClass::Internal) => AppError::Internal(anyhow::Error::new(error)),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind, param, code, retry_after) = match &self {
            AppError::BadRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                param.clone(),
                code.map(str::to_string),
                None,
            ),
            AppError::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model".to_string()),
                Some("model_not_found".to_string()),
                None,
            ),
            AppError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                Some("not_found".to_string()),
                None,
            ),
            AppError::Unavailable {
                retry_after_secs, ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                None,
                None,
                Some(*retry_after_secs),
            ),
            AppError::TooManyRequests {
                retry_after_secs, ..
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                None,
                Some("rate_limit_exceeded".to_string()),
                Some(*retry_after_secs),
            ),
            AppError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    None,
                    None,
                    None,
                )
            }
        };
        let message = match &self {
            AppError::Internal(_) => "internal server error".to_string(),
            other => other.to_string(),
        };
        let body =
            json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type AppResult<T> = Result<T, AppError>;
