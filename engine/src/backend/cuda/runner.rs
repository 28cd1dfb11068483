//! `CudaLlama` as the scheduler's `ModelRunner`: the scheduler's segments become the
//! kernels' chunks over the same block tables. Tokens are sampled on the GPU, so only their
//! ids cross PCIe; rows that need the host's sampler (penalties, log-probabilities) bring
//! their logits back.

use crate::backend::{ModelRunner, Output, Want};
use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::llama::Segment;

use super::CudaError;
use super::batch::Chunk;
use super::llama::CudaLlama;
use super::sampling;

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

    fn samples_on_device(&self) -> bool {
        true
    }

    fn forward(&mut self, segments: &mut [Segment<'_>], wants: &[Want]) -> Result<Vec<Output>> {
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
        let stream = self.gpu().stream.clone();
        let tokens = if wants.iter().any(|w| matches!(w, Want::Token(_))) {
            let rows: Vec<_> = wants
                .iter()
                .map(|w| match w {
                    Want::Token(params) => *params,
                    Want::Nothing | Want::Logits => sampling::GREEDY,
                })
                .collect();
            let params = stream
                .clone_htod(&sampling::pack(&rows))
                .map_err(CudaError::from)?;
            let mut out = stream
                .alloc_zeros::<u32>(rows.len())
                .map_err(CudaError::from)?;
            self.gpu()
                .kernels
                .sample(&logits, &params, &mut out, vocab)?;
            stream.clone_dtoh(&out).map_err(CudaError::from)?
        } else {
            Vec::new()
        };
        let mut outputs = Vec::with_capacity(wants.len());
        for (row, want) in wants.iter().enumerate() {
            outputs.push(match want {
                Want::Nothing => Output::Nothing,
                Want::Token(_) => Output::Token(tokens[row]),
                Want::Logits => Output::Logits(
                    stream
                        .clone_dtoh(&logits.slice(row * vocab..(row + 1) * vocab))
                        .map_err(CudaError::from)?,
                ),
            });
        }
        for seg in segments.iter_mut() {
            seg.cache.advance(seg.tokens.len());
        }
        Ok(outputs)
    }
}
