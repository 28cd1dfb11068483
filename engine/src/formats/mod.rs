//! Model file formats: GGUF and Hugging Face safetensors directories, the tokenizers
//! they carry, and chat templates.

pub mod chat_template;
pub mod gguf;
pub mod gguf_tokenizer;
mod mapped;
