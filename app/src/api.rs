//! `router(state)`: mounts every capability's routes, health, metrics and the UI.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::AppError;
use crate::state::AppState;
use crate::{anthropic, conversations, gateway, gpu, openai, traces, ui_assets};

/// Request bodies larger than this are refused (413).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    // Inference calls pass the meter first: key limits, spend, and the gateway's models
    // go upstream.
    let inference = Router::new()
        .route("/chat/completions", post(openai::chat::chat_completions))
        .route("/completions", post(openai::completions::completions))
        .route("/embeddings", post(openai::embeddings::embeddings))
        .route("/messages", post(anthropic::messages))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::meter::meter,
        ));
    let key = middleware::from_fn_with_state(state.clone(), gateway::auth::require_key);
    let v1 = Router::new()
        .route("/models", get(openai::models::list_models))
        .merge(inference)
        .fallback(unknown_route)
        .layer(key.clone());
    // LiteLLM's admin routes: virtual keys and the spend log.
    let admin = Router::new()
        .route("/key/generate", post(gateway::key_api::generate))
        .route("/key/update", post(gateway::key_api::update))
        .route("/key/delete", post(gateway::key_api::delete))
        .route("/key/info", get(gateway::key_api::key_info))
        .route("/spend/logs", get(gateway::spend_api::logs))
        .route_layer(key.clone());
    let vllm_extras = Router::new()
        .route("/tokenize", post(openai::tokenize::tokenize))
        .route("/detokenize", post(openai::tokenize::detokenize))
        .route_layer(key.clone());
    let conversations = Router::new()
        .route("/", get(conversations::list).post(conversations::create))
        .route(
            "/{id}",
            get(conversations::get).delete(conversations::delete),
        )
        .route("/{id}/messages", post(conversations::add_message));
    // The UI's own API holds conversations: the same key guards it.
    let ui_api = Router::new()
        .nest("/conversations", conversations)
        .route("/gpu", get(gpu::api::status))
        .route("/gpu/history", get(gpu::api::history))
        .route_layer(key)
        .merge(langfuse_api());
    Router::new()
        .nest("/v1", v1)
        .nest("/api", ui_api)
        .merge(vllm_extras)
        .merge(admin)
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        // OTLP's default path, for exporters pointed at agentbox as a collector.
        .route("/v1/traces", post(traces::api::otel_traces))
        .fallback(ui_assets::serve)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Langfuse's public API under `/api/public`; each handler checks the project's Basic
/// credentials itself.
fn langfuse_api() -> Router<AppState> {
    use traces::{api, read_api};
    Router::new()
        .route("/public/ingestion", post(api::ingestion))
        .route("/public/otel/v1/traces", post(api::otel_traces))
        .route("/public/scores", post(api::create_scores))
        .route("/public/projects", get(api::projects))
        .route("/public/health", get(api::health))
        .route("/public/traces", get(read_api::list_traces))
        .route("/public/traces/{id}", get(read_api::get_trace))
        .route("/public/observations", get(read_api::list_observations))
        .route("/public/observations/{id}", get(read_api::get_observation))
        .route("/public/sessions", get(read_api::list_sessions))
        .route("/public/sessions/{id}", get(read_api::get_session))
        .route("/public/metrics/daily", get(read_api::daily_metrics))
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        AppError::models_loading().into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let models = state.models.get().cloned();
    match state.metrics.render(models.as_deref()) {
        Ok(mut text) => {
            state.gpu.render_metrics(&mut text);
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(error) => AppError::Internal(error).into_response(),
    }
}

async fn unknown_route() -> AppError {
    AppError::NotFound("unknown API route".into())
}
