//! Compute backends, and the one interface the scheduler steps them through.
//!
//! - `cpu`: candle's tensor ops plus our own SIMD kernels for the quantized matrix
//!   multiplications that dominate decoding, over the f32 paged KV cache.
//! - `cuda`: our own kernels (compiled by NVRTC at start) and cuBLAS, loaded at run time,
//!   over a bf16 paged KV cache in GPU memory.
//!
//! Both run the same Llama-family model over the same block tables: the scheduler, the
//! block allocator and the prefix cache are shared code (`crate::scheduler`) and see only
//! `ModelRunner`. `device` chooses between them (`auto`, `cpu`, `cuda[:N]`).

pub mod cpu;
pub mod cuda;
mod device;

pub use device::{Device, DeviceRequest, ResolvedDevice};

use crate::error::Result;
use crate::model::config::LlamaConfig;
use crate::model::llama::Segment;
use crate::sampling::DeviceSampling;

/// What the scheduler wants from a segment's last token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Want {
    /// Nothing: a prompt chunk that is not the prompt's last.
    Nothing,
    /// The logits, for the host's sampler (penalties, log-probabilities, or a runner that
    /// does not sample).
    Logits,
    /// A token sampled on the device; only runners that `samples_on_device` are asked.
    Token(DeviceSampling),
}

/// A segment's result, as wanted.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Nothing,
    Logits(Vec<f32>),
    Token(u32),
}

/// A model's forward pass on one device, together with that device's KV cache.
pub trait ModelRunner: Send {
    fn config(&self) -> &LlamaConfig;

    /// Blocks of `kv_cache::BLOCK_SIZE` tokens the KV cache holds.
    fn kv_blocks(&self) -> usize;

    /// Bytes of KV cache one token takes on this device.
    fn kv_bytes_per_token(&self) -> usize;

    /// Whether every position's result is the same bits however the batch around it is
    /// shaped. Then the prefix cache reuses any whole block of a prompt; otherwise only
    /// whole chunks of `max_batched_tokens`, so that the rest of the prompt is computed in
    /// the very shapes it would have had uncached. Either way cached output equals uncached.
    fn rows_independent(&self) -> bool {
        false
    }

    /// Whether `forward` can answer `Want::Token`.
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Runs one step over the segments and returns, in segment order, what `wants` asks
    /// of each one's last token. Every segment's cache grows by its token count.
    fn forward(&mut self, segments: &mut [Segment<'_>], wants: &[Want]) -> Result<Vec<Output>>;
}
