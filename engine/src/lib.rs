//! agentbox's inference engine: loads Llama-family chat models (GGUF or safetensors) and
//! BERT embedders, and serves generations through a continuous-batching scheduler.
//!
//! This crate does no network I/O and knows no wire format: `app` converts its plain Rust
//! types to and from OpenAI's JSON.

pub mod backend;
pub mod error;
pub mod formats;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;

mod chat_model;

pub use backend::{Device, DeviceRequest, ResolvedDevice};
pub use chat_model::{ChatModel, ModelSource, Placement};
pub use error::{EngineError, ErrorClass, Result};
pub use formats::chat_template::ChatMessage;
pub use model::bert::SentenceEmbedder;
pub use sampling::{SamplingParams, TokenLogprob};
pub use scheduler::{
    Completion, FinishReason, GenerationEvent, GenerationRequest, GenerationStream,
    GenerationTimings, KvCapacity, SchedulerOptions, SchedulerStats,
};

/// Sets the number of CPU threads the tensor kernels use.
///
/// # Safety
/// Call once at start-up, before any other thread exists: it sets environment variables.
pub unsafe fn set_cpu_threads(threads: usize) -> Result<()> {
    // candle sizes its own pools from these variables, and otherwise re-reads
    // /proc/cpuinfo on every parallel op.
    // SAFETY: called before any other thread is started, so nothing reads the environment
    // concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        // candle's own pool (K-quant matmuls, some element-wise ops) spins 25,000 rounds
        // after each job before it parks, taking a core from our kernels' pool in the
        // meantime. A short spin measured 8-20% faster on a Q4_K_M model (BENCHMARKS.md).
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
        }
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| EngineError::InvalidParameter {
            param: "threads",
            message: e.to_string(),
        })
}
