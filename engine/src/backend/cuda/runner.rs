//! `CudaLlama` as the scheduler's `ModelRunner`: the scheduler's segments become the
//! kernels' chunks over the same block tables, and each step's logits come back to the
//! host for the sampler.

use crate::backend::ModelRunner;
use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::llama::Segment;

use super::batch::Chunk;
use super::llama::CudaLlama;

impl ModelRunner for CudaLlama {
    fn config(&self) -> &LlamaConfig {
        CudaLlama::config(self)
    }

    fn kv_blocks(&self) -> usize {
        CudaLlama::kv_blocks(self)
    }

    fn kv_bytes_per_token(&self) -> usize {
        let c = CudaLlama::config(self);
        2 * c.n_layers * c.n_kv_heads * c.head_dim * std::mem::size_of::<half::bf16>()
    }

    fn forward(&mut self, segments: &mut [Segment<'_>]) -> Result<Vec<Vec<f32>>> {
        let context_length = CudaLlama::config(self).context_length;
        let vocab = CudaLlama::config(self).vocab_size;
        let mut chunks = Vec::with_capacity(segments.len());
        for seg in segments.iter() {
            let start = seg.cache.len();
            let end = start + seg.tokens.len();
            if end > context_length {
                return Err(EngineError::InputTooLong {
                    len: end,
                    limit: context_length,
                });
            }
            chunks.push(Chunk {
                tokens: seg.tokens,
                start,
                blocks: &seg.cache.blocks,
            });
        }
        let logits = self.forward_chunks(&chunks)?;
        let host = self
            .gpu()
            .stream
            .clone_dtoh(&logits)
            .map_err(super::CudaError::from)?;
        for seg in segments.iter_mut() {
            seg.cache.advance(seg.tokens.len());
        }
        Ok(host.chunks(vocab).map(<[f32]>::to_vec).collect())
    }
}
