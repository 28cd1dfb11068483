//! LiteLLM's key management routes: `POST /key/generate`, `/key/update`, `/key/delete`
//! and `GET /key/info`. Only the master key may manage keys; a virtual key may read its
//! own info. A new key is shown once, in the answer to `/key/generate`; only its SHA-256
//! (`token`) is stored.

use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::Caller;
use super::keys::{display_name, hash_key, new_key, parse_duration, token_of};
use crate::error::AppError;
use crate::openai::json::OpenAiJson;
use crate::state::AppState;
use crate::store::{DuplicateAlias, StoredKey};

fn forbidden() -> Response {
    let body = json!({"error": {"message": "only the master key may manage keys", "type": "auth_error", "param": null, "code": "forbidden"}});
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// Why this caller may not manage keys, if it may not. Keys exist to restrict callers:
/// without a master key nobody is restricted, so there are none.
fn not_master(state: &AppState, caller: &Caller) -> Option<Response> {
    if state.master_key.is_none() {
        return Some(
            AppError::bad_request(
                "master_key",
                "virtual keys need a master key: set AGENTBOX_MASTER_KEY (or general_settings.master_key)",
            )
            .into_response(),
        );
    }
    (!matches!(caller, Caller::Master)).then(forbidden)
}

/// The key's settings as LiteLLM shows them.
fn info(key: &StoredKey) -> Value {
    let time = |secs: Option<i64>| secs.map(|s| crate::clock::rfc3339_ms(s * 1000));
    json!({
        "token": key.token,
        "key_name": key.key_name,
        "key_alias": key.key_alias,
        "spend": key.spend,
        "max_budget": key.max_budget,
        "budget_duration": key.budget_duration,
        "budget_reset_at": time(key.budget_reset_at),
        "models": key.models,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "max_parallel_requests": key.max_parallel_requests,
        "expires": time(key.expires_at),
        "metadata": key.metadata,
        "created_at": time(Some(key.created_at)),
        "updated_at": time(Some(key.updated_at)),
    })
}

fn bad(field: &str, what: &str) -> AppError {
    AppError::bad_request(field, format!("`{field}` must be {what}"))
}

/// Applies the settings present in `body` to `key`; `null` clears a limit.
fn apply(body: &Map<String, Value>, key: &mut StoredKey, now: i64) -> Result<(), AppError> {
    let count = |field: &str| -> Result<Option<Option<u64>>, AppError> {
        match body.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(value) => value
                .as_u64()
                .map(|n| Some(Some(n)))
                .ok_or_else(|| bad(field, "a whole number >= 0 or null")),
        }
    };
    if let Some(value) = body.get("models") {
        key.models = match value {
            Value::Null => Vec::new(),
            Value::Array(models) => models
                .iter()
                .map(|m| m.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("models", "a list of model names"))?,
            _ => return Err(bad("models", "a list of model names")),
        };
    }
    if let Some(value) = body.get("max_budget") {
        key.max_budget = match value {
            Value::Null => None,
            value => Some(
                value
                    .as_f64()
                    .filter(|b| *b >= 0.0 && b.is_finite())
                    .ok_or_else(|| bad("max_budget", "a number >= 0 or null"))?,
            ),
        };
    }
    if let Some(value) = body.get("budget_duration") {
        key.budget_duration = match value {
            Value::Null => None,
            Value::String(text) if parse_duration(text).is_some() => Some(text.clone()),
            _ => {
                return Err(bad(
                    "budget_duration",
                    "a duration like \"30s\", \"1h\", \"30d\" or null",
                ));
            }
        };
        key.budget_reset_at = key
            .budget_duration
            .as_deref()
            .and_then(parse_duration)
            .map(|period| now + period);
    }
    if let Some(value) = body.get("duration") {
        key.expires_at = match value {
            Value::Null => None,
            Value::String(text) => Some(
                now + parse_duration(text)
                    .ok_or_else(|| bad("duration", "a duration like \"30d\" or null"))?,
            ),
            _ => return Err(bad("duration", "a duration like \"30d\" or null")),
        };
    }
    if let Some(limit) = count("rpm_limit")? {
        key.rpm_limit = limit;
    }
    if let Some(limit) = count("tpm_limit")? {
        key.tpm_limit = limit;
    }
    if let Some(limit) = count("max_parallel_requests")? {
        key.max_parallel_requests = limit;
    }
    if let Some(value) = body.get("metadata") {
        if !(value.is_object() || value.is_null()) {
            return Err(bad("metadata", "an object"));
        }
        key.metadata = value.clone();
    }
    if let Some(value) = body.get("key_alias") {
        key.key_alias = match value {
            Value::Null => None,
            Value::String(alias) if !alias.is_empty() => Some(alias.clone()),
            _ => return Err(bad("key_alias", "a non-empty string or null")),
        };
    }
    key.updated_at = now;
    Ok(())
}

/// Stores the key; the error response if that fails.
async fn save(state: &AppState, key: StoredKey) -> Option<Response> {
    match state.store.save_key(key).await {
        Ok(()) => None,
        Err(e) if e.is::<DuplicateAlias>() => {
            Some(AppError::bad_request("key_alias", e.to_string()).into_response())
        }
        Err(e) => Some(AppError::Internal(e).into_response()),
    }
}

pub async fn generate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(body): OpenAiJson<Map<String, Value>>,
) -> Response {
    if let Some(refusal) = not_master(&state, &caller) {
        return refusal;
    }
    let now = super::unix_now();
    let secret = match body.get("key") {
        None | Some(Value::Null) => new_key(),
        Some(Value::String(key)) if key.starts_with("sk-") && key.len() >= 12 => key.clone(),
        Some(_) => {
            return bad(
                "key",
                "a string starting with \"sk-\", at least 12 characters",
            )
            .into_response();
        }
    };
    let token = hash_key(&secret);
    if state.ledger.keys.get(&token).is_some() {
        return AppError::bad_request("key", "this key already exists").into_response();
    }
    let mut key = StoredKey {
        token,
        key_name: display_name(&secret),
        key_alias: None,
        models: Vec::new(),
        max_budget: None,
        budget_duration: None,
        budget_reset_at: None,
        rpm_limit: None,
        tpm_limit: None,
        max_parallel_requests: None,
        expires_at: None,
        metadata: json!({}),
        spend: 0.0,
        created_at: now,
        updated_at: now,
    };
    if let Err(error) = apply(&body, &mut key, now) {
        return error.into_response();
    }
    if let Some(refusal) = save(&state, key.clone()).await {
        return refusal;
    }
    state.ledger.keys.insert(key.clone());
    let mut answer = info(&key);
    answer["key"] = Value::String(secret);
    answer["token_id"] = Value::String(key.token.clone());
    Json(answer).into_response()
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(body): OpenAiJson<Map<String, Value>>,
) -> Response {
    if let Some(refusal) = not_master(&state, &caller) {
        return refusal;
    }
    let Some(given) = body.get("key").and_then(Value::as_str) else {
        return bad("key", "the key (or its token) to update").into_response();
    };
    let token = token_of(given);
    let Some(existing) = state.ledger.keys.get(&token) else {
        return AppError::NotFound("no such key".into()).into_response();
    };
    let now = super::unix_now();
    let mut key = existing.snapshot(now);
    if let Err(error) = apply(&body, &mut key, now) {
        return error.into_response();
    }
    if let Some(refusal) = save(&state, key.clone()).await {
        return refusal;
    }
    existing.replace(key.clone());
    Json(info(&key)).into_response()
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(body): OpenAiJson<Map<String, Value>>,
) -> Response {
    if let Some(refusal) = not_master(&state, &caller) {
        return refusal;
    }
    let strings = |field: &str| -> Result<Vec<String>, AppError> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(field, "a list of strings")),
            Some(_) => Err(bad(field, "a list of strings")),
        }
    };
    let (keys, aliases) = match (strings("keys"), strings("key_aliases")) {
        (Ok(keys), Ok(aliases)) => (keys, aliases),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let mut tokens: Vec<String> = keys.iter().map(|k| token_of(k)).collect();
    tokens.extend(
        aliases
            .iter()
            .filter_map(|a| state.ledger.keys.token_for_alias(a)),
    );
    if tokens.is_empty() {
        return bad("keys", "a non-empty list of keys (or `key_aliases`)").into_response();
    }
    let deleted = match state.store.delete_keys(tokens).await {
        Ok(deleted) => deleted,
        Err(e) => return AppError::Internal(e).into_response(),
    };
    if deleted.is_empty() {
        return AppError::NotFound("none of these keys exist".into()).into_response();
    }
    for token in &deleted {
        state.ledger.keys.remove(token);
    }
    Json(json!({"deleted_keys": deleted})).into_response()
}

#[derive(serde::Deserialize)]
pub struct InfoQuery {
    key: Option<String>,
}

pub async fn key_info(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<InfoQuery>,
) -> Response {
    let token = match (&caller, query.key.as_deref()) {
        (Caller::Virtual(own), None) => own.token.clone(),
        (Caller::Virtual(own), Some(given)) => {
            let token = token_of(given);
            if token != own.token {
                return forbidden();
            }
            token
        }
        (_, Some(given)) => token_of(given),
        (_, None) => return bad("key", "given as ?key=").into_response(),
    };
    let Some(key) = state.ledger.keys.get(&token) else {
        return AppError::NotFound("no such key".into()).into_response();
    };
    let key = key.snapshot(super::unix_now());
    Json(json!({"key": key.token, "info": info(&key)})).into_response()
}
