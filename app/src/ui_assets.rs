//! The web UI: the wasm bundle built into `ui/dist` (see `scripts/build-ui.sh`), embedded
//! in the binary at compile time and served at `/`.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../ui/dist/"]
#[allow_missing = true]
struct Assets;

pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Assets::get(path) {
        Some(file) => asset_response(file, &headers),
        // Client-side routes fall back to the app shell.
        None if !path.contains('.') => match Assets::get("index.html") {
            Some(file) => asset_response(file, &headers),
            None => missing_ui(),
        },
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The bundle's file names are fixed, so browsers must revalidate every asset (`no-cache`)
/// or they could pair an old `ui.js` with a new `ui_bg.wasm`; the content hash as ETag
/// keeps revalidation to a 304.
fn asset_response(file: rust_embed::EmbeddedFile, request: &HeaderMap) -> Response {
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash.iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let headers = [
        (header::CONTENT_TYPE, file.metadata.mimetype().to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag),
    ];
    if cached {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, file.data).into_response()
    }
}

fn missing_ui() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this agentbox binary was built without its web UI; run `make ui` and rebuild",
    )
        .into_response()
}
