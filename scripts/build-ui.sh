#!/usr/bin/env bash
# Builds the leptos web UI to wasm and assembles ui/dist/ (embedded by the app at compile time).
# Idempotent; run from anywhere inside the repo on a fresh machine (needs rustup + cargo).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentbox-target}"
export PATH="$HOME/.cargo/bin:$PATH"

# 1. The wasm target.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

# 2. wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in Cargo.lock.
bindgen_version="$(awk '
    $0 == "name = \"wasm-bindgen\"" { found = 1; next }
    found && /^version = / { gsub(/"/, "", $3); print $3; exit }
' Cargo.lock)"
if [[ -z "$bindgen_version" ]]; then
    echo "build-ui: could not find the wasm-bindgen version in Cargo.lock" >&2
    exit 1
fi
installed_version="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [[ "$installed_version" != "$bindgen_version" ]]; then
    # --locked can fail when the registry lacks a crate version pinned in the CLI's
    # own lockfile; the version of the CLI itself is pinned either way.
    cargo install wasm-bindgen-cli --version "$bindgen_version" --locked --force \
        || cargo install wasm-bindgen-cli --version "$bindgen_version" --force
fi

# 3. The wasm module.
cargo build --release -p ui --target wasm32-unknown-unknown

# 4. JS glue + final wasm, assembled beside ui/dist and swapped in at the end so a
#    concurrent app build (which embeds ui/dist) never sees it half-written.
dist="ui/dist"
staging="ui/dist.tmp"
rm -rf "$staging"
mkdir -p "$staging"
wasm-bindgen --target web --no-typescript --out-dir "$staging" \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/ui.wasm"

# 5. Static files.
cp ui/index.html ui/style.css "$staging/"

# Leave an unchanged ui/dist untouched: its mtimes decide whether the app re-embeds it.
if diff -rq "$staging" "$dist" >/dev/null 2>&1; then
    rm -rf "$staging"
    echo "build-ui: $repo_root/$dist is up to date"
else
    rm -rf "$dist"
    mv "$staging" "$dist"
    echo "build-ui: wrote $repo_root/$dist"
fi
