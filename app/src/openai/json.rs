//! `OpenAiJson<T>`: a JSON body extractor whose rejections are OpenAI-shaped 400s that name
//! the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::AppError;

pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OpenAiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            AppError::bad_request("body", format!("could not read the request body: {e}"))
        })?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
        let message = match serde_json::from_slice::<serde_json::Value>(bytes) {
            Err(e) => format!("the request body is not valid JSON: {e}"),
            Ok(_) => "the request body is not valid JSON".to_string(),
        };
        return Err(AppError::BadRequest {
            message,
            param: None,
            code: None,
        });
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let param = match inner.split('`').nth(1) {
            Some(field) if inner.starts_with("missing field") => {
                if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                }
            }
            _ => path,
        };
        AppError::BadRequest {
            message: format!("invalid field `{param}`: {inner}"),
            param: Some(param),
            code: None,
        }
    })
}
