//! The OpenAI-compatible API: wire types, and handlers for models, chat completions,
//! completions and embeddings.

pub mod chat;
pub mod completions;
pub mod embeddings;
mod generation;

pub use generation::EngineReport;
pub mod json;
pub mod models;
pub mod tokenize;
pub mod types;
