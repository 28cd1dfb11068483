//! Model definitions: the Llama-family decoder (one forward pass over a batch of
//! sequences) and the BERT sentence embedder.

pub mod bert;
pub mod config;
pub mod dense;
pub mod kv_cache;
pub mod llama;
pub(crate) mod weights;
