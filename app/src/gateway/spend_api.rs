//! `GET /spend/logs`: the spend log in LiteLLM's shape, filtered by `api_key`, `user_id`,
//! `request_id` and `start_date` / `end_date` (`YYYY-MM-DD`, end inclusive), newest first.
//! The master key reads every row; a virtual key reads its own.

use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Caller;
use super::keys::token_of;
use crate::clock::{parse_day, rfc3339_ms};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{SpendFilter, SpendRecord};

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

#[derive(serde::Deserialize)]
pub struct SpendQuery {
    api_key: Option<String>,
    user_id: Option<String>,
    request_id: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    limit: Option<usize>,
}

fn row(record: SpendRecord) -> Value {
    json!({
        "request_id": record.request_id,
        "call_type": record.call_type,
        "api_key": record.api_key,
        "spend": record.spend,
        "total_tokens": record.prompt_tokens + record.completion_tokens,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "startTime": rfc3339_ms(record.start_time_ms),
        "endTime": rfc3339_ms(record.end_time_ms),
        "model": record.model,
        "model_group": record.model_group,
        "custom_llm_provider": record.provider,
        "api_base": record.api_base,
        "user": record.user,
        "cache_hit": record.cache_hit,
        "request_tags": record.request_tags,
        "status": if record.status_code < 400 { "success" } else { "failure" },
        "metadata": {"status_code": record.status_code, "user_api_key_alias": record.key_alias},
    })
}

pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<SpendQuery>,
) -> Response {
    let day = |field: &str, text: &Option<String>| -> Result<Option<i64>, AppError> {
        text.as_deref()
            .map(|t| {
                parse_day(t).ok_or_else(|| {
                    AppError::bad_request(field, format!("`{field}` must be YYYY-MM-DD"))
                })
            })
            .transpose()
    };
    let (start, end) = match (
        day("start_date", &query.start_date),
        day("end_date", &query.end_date),
    ) {
        (Ok(start), Ok(end)) => (start, end),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let requested_key = query.api_key.as_deref().map(token_of);
    let api_key = match &caller {
        Caller::Virtual(own) => {
            if requested_key.as_ref().is_some_and(|k| *k != own.token) {
                return AppError::bad_request(
                    "api_key",
                    "a virtual key may read only its own spend",
                )
                .into_response();
            }
            Some(own.token.clone())
        }
        _ => requested_key,
    };
    let filter = SpendFilter {
        api_key,
        user: query.user_id,
        request_id: query.request_id,
        start_ms: start.map(|d| d * 86_400_000),
        end_ms: end.map(|d| (d + 1) * 86_400_000),
        limit: query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    match state.store.spend_logs(filter).await {
        Ok(records) => Json(records.into_iter().map(row).collect::<Vec<_>>()).into_response(),
        Err(e) => AppError::Internal(e).into_response(),
    }
}
