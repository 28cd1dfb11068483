//! The paged KV cache. `KvPool` holds every sequence's keys and values in fixed-size blocks
//! of `BLOCK_SIZE` tokens; a sequence's `BlockTable` lists its blocks in order. Per layer,
//! values are laid out `[block][kv_head][slot][head_dim]` and keys transposed,
//! `[block][kv_head][head_dim][slot]`, so that attention (`backend::cpu::attention`) dots a
//! query with a block's keys slot-parallel, reading the blocks in place. Keys and values
//! are stored as f16 (rounded to nearest even), llama.cpp's default cache type: half the
//! memory and half the bytes attention reads per step; attention widens them to f32.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::model::config::LlamaConfig;

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

pub struct KvPool {
    n_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per layer, `n_blocks * kv_heads * BLOCK_SIZE * head_dim` values.
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
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
                .map(|_| vec![f16::ZERO; per_layer])
                .collect(),
            values: (0..config.n_layers)
                .map(|_| vec![f16::ZERO; per_layer])
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

    /// Where a block's keys (or values) for one KV head start.
    fn offset(&self, block: u32, head: usize) -> usize {
        (block as usize * self.kv_heads + head) * BLOCK_SIZE * self.head_dim
    }

    /// Writes new tokens' keys and values, each `[tokens, kv_heads, head_dim]`, at positions
    /// `start..` of the sequence.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        table: &BlockTable,
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) {
        let d = self.head_dim;
        let token_width = self.kv_heads * d;
        // A token's keys rounded at once (vectorized), then spread over their slots.
        let mut rounded_keys = vec![f16::ZERO; token_width];
        for (i, (token_keys, token_values)) in keys
            .chunks_exact(token_width)
            .zip(values.chunks_exact(token_width))
            .enumerate()
        {
            let position = start + i;
            let block = table.blocks[position / BLOCK_SIZE];
            let slot = position % BLOCK_SIZE;
            rounded_keys.convert_from_f32_slice(token_keys);
            for (head, (k, v)) in rounded_keys
                .chunks_exact(d)
                .zip(token_values.chunks_exact(d))
                .enumerate()
            {
                let at = self.offset(block, head);
                let block_keys = &mut self.keys[layer][at..at + d * BLOCK_SIZE];
                for (dim, &key) in k.iter().enumerate() {
                    block_keys[dim * BLOCK_SIZE + slot] = key;
                }
                self.values[layer][at + slot * d..at + (slot + 1) * d].convert_from_f32_slice(v);
            }
        }
    }

    /// A block's keys for one KV head, transposed: `[head_dim][BLOCK_SIZE]`.
    pub(crate) fn block_keys(&self, layer: usize, block: u32, head: usize) -> &[f16] {
        let at = self.offset(block, head);
        &self.keys[layer][at..at + self.head_dim * BLOCK_SIZE]
    }

    /// A block's values for one KV head: `[BLOCK_SIZE][head_dim]`.
    pub(crate) fn block_values(&self, layer: usize, block: u32, head: usize) -> &[f16] {
        let at = self.offset(block, head);
        &self.values[layer][at..at + BLOCK_SIZE * self.head_dim]
    }
}
