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

/// A model's forward pass on one device, together with that device's KV cache.
pub trait ModelRunner: Send {
    fn config(&self) -> &LlamaConfig;

    /// Blocks of `kv_cache::BLOCK_SIZE` tokens the KV cache holds.
    fn kv_blocks(&self) -> usize;

    /// Bytes of KV cache one token takes on this device.
    fn kv_bytes_per_token(&self) -> usize;

    /// Runs one step over the segments and returns the logits of each segment's last
    /// token, in segment order. Every segment's cache grows by its token count.
    fn forward(&mut self, segments: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>>;
}
