//! The paged KV cache. `KvPool` holds every sequence's keys and values in fixed-size blocks
//! of `BLOCK_SIZE` tokens, per layer laid out `[block][kv_head][slot][head_dim]`; a
//! sequence's `BlockTable` lists its blocks in order. Attention gathers a sequence's blocks
//! into one contiguous context per layer and step.

use crate::model::config::LlamaConfig;

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

pub struct KvPool {
    n_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per layer, `n_blocks * kv_heads * BLOCK_SIZE * head_dim` values.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// One sequence's blocks and the number of tokens they hold.
#[derive(Debug, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    len: usize,
}

impl BlockTable {
    pub fn with_blocks(blocks: Vec<u32>) -> Self {
        Self { blocks, len: 0 }
    }

    /// Blocks whose first `len` tokens are already computed (a cached prefix).
    pub(crate) fn with_cached_prefix(blocks: Vec<u32>, len: usize) -> Self {
        Self { blocks, len }
    }

    /// Tokens in the cache; the next token sits at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the current blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK_SIZE
    }

    pub(crate) fn advance(&mut self, n_new: usize) {
        self.len += n_new;
    }

    /// Forgets the contents and hands back the blocks (preemption, completion).
    pub fn take_blocks(&mut self) -> Vec<u32> {
        self.len = 0;
        std::mem::take(&mut self.blocks)
    }
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize) -> usize {
    tokens.div_ceil(BLOCK_SIZE)
}

impl KvPool {
    /// A pool of `n_blocks` blocks. Memory is reserved lazily by the OS (zeroed pages).
    pub fn new(config: &LlamaConfig, n_blocks: usize) -> Self {
        let per_layer = n_blocks * config.n_kv_heads * BLOCK_SIZE * config.head_dim;
        Self {
            n_blocks,
            kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            keys: (0..config.n_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
            values: (0..config.n_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
        }
    }

    /// How many blocks fit in `bytes`.
    pub fn blocks_in(config: &LlamaConfig, bytes: usize) -> usize {
        bytes / (config.kv_bytes_per_token() * BLOCK_SIZE)
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    fn offset(&self, block: u32, head: usize, slot: usize) -> usize {
        ((block as usize * self.kv_heads + head) * BLOCK_SIZE + slot) * self.head_dim
    }

    /// Writes `t` new tokens' keys and values, each `[kv_heads, t, head_dim]`, at positions
    /// `start..start + t` of the sequence.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        table: &BlockTable,
        start: usize,
        t: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let d = self.head_dim;
        for head in 0..self.kv_heads {
            for i in 0..t {
                let position = start + i;
                let block = table.blocks[position / BLOCK_SIZE];
                let at = self.offset(block, head, position % BLOCK_SIZE);
                let from = (head * t + i) * d;
                self.keys[layer][at..at + d].copy_from_slice(&keys[from..from + d]);
                self.values[layer][at..at + d].copy_from_slice(&values[from..from + d]);
            }
        }
    }

    /// The first `len` tokens' keys and values, each as `[kv_heads, len, head_dim]`.
    pub(crate) fn gather(
        &self,
        layer: usize,
        table: &BlockTable,
        len: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        // Appended in order (head, then block): no zeroing of memory about to be copied.
        let mut keys = Vec::with_capacity(self.kv_heads * len * d);
        let mut values = Vec::with_capacity(self.kv_heads * len * d);
        for head in 0..self.kv_heads {
            for (b, &block) in table.blocks.iter().enumerate() {
                let first = b * BLOCK_SIZE;
                if first >= len {
                    break;
                }
                let count = BLOCK_SIZE.min(len - first);
                let at = self.offset(block, head, 0);
                keys.extend_from_slice(&self.keys[layer][at..at + count * d]);
                values.extend_from_slice(&self.values[layer][at..at + count * d]);
            }
        }
        (keys, values)
    }
}
