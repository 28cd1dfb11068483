//! End-to-end test crate: everything lives under `tests/tests/`.
