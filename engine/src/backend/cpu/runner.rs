//! `CpuRunner`: the Llama forward pass on the CPU with its f16 paged KV pool, sized in
//! bytes.

use crate::backend::{ModelRunner, Output, Want};
use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::kv_cache::{BLOCK_SIZE, KvPool};
use crate::model::llama::{LlamaModel, Segment};

pub struct CpuRunner {
    model: LlamaModel,
    pool: KvPool,
}

impl CpuRunner {
    /// The model with a KV pool of as many whole blocks as fit in `kv_cache_bytes`.
    pub fn new(model: LlamaModel, kv_cache_bytes: usize) -> Result<Self> {
        let n_blocks = KvPool::blocks_in(model.config(), kv_cache_bytes);
        if n_blocks == 0 {
            return Err(EngineError::InvalidParameter {
                param: "kv_cache_bytes",
                message: format!(
                    "{kv_cache_bytes} bytes hold no block of {BLOCK_SIZE} tokens ({} bytes each)",
                    model.config().kv_bytes_per_token() * BLOCK_SIZE
                ),
            });
        }
        let pool = model.new_kv_pool(n_blocks);
        Ok(Self { model, pool })
    }
}

impl ModelRunner for CpuRunner {
    fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    fn kv_blocks(&self) -> usize {
        self.pool.n_blocks()
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.model.config().kv_bytes_per_token()
    }

    fn rows_independent(&self) -> bool {
        self.model.rows_independent()
    }

    fn forward(&mut self, segments: &mut [Segment<'_>], wants: &[Want]) -> Result<Vec<Output>> {
        let logits = self.model.forward(&mut self.pool, segments)?;
        wants
            .iter()
            .enumerate()
            .map(|(row, want)| match want {
                Want::Nothing => Ok(Output::Nothing),
                Want::Logits => Ok(Output::Logits(logits.get(row)?.to_vec1::<f32>()?)),
                Want::Token(_) => Err(EngineError::ForwardFailed(
                    "the CPU runner leaves sampling to the host".into(),
                )),
            })
            .collect()
    }
}
