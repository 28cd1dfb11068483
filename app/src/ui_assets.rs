//! The web UI: the wasm bundle built into `ui/dist` (see `scripts/build-ui.sh`), embedded
//! in the binary at compile time and served at `/`.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../ui/dist/"]
#[allow_missing = true]
struct Assets;

pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Assets::get(path) {
        Some(file) => asset_response(path, file),
        // Client-side routes fall back to the app shell.
        None if !path.contains('.') => match Assets::get("index.html") {
            Some(file) => asset_response("index.html", file),
            None => missing_ui(),
        },
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn asset_response(path: &str, file: rust_embed::EmbeddedFile) -> Response {
    let mime = file.metadata.mimetype().to_string();
    let cache = if path == "index.html" {
        "no-cache"
    } else {
        "public, max-age=300"
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, cache.to_string()),
        ],
        file.data,
    )
        .into_response()
}

fn missing_ui() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this agentbox binary was built without its web UI; run `make ui` and rebuild",
    )
        .into_response()
}
