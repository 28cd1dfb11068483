//! The host side of one CUDA forward step: a batch of chunks (a prompt chunk or a single
//! decode token per sequence) flattened into the index arrays the kernels read. Pure data,
//! tested without a GPU.

use super::CudaError;
use super::ops::BLOCK_SIZE;

/// One sequence's part of a step: `tokens` at positions `start..start + tokens.len()`,
/// cached in `blocks` (which must cover every position up to the last token).
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
}

/// The per-token and per-chunk arrays of a step, ready to upload.
#[derive(Debug, Default, PartialEq)]
pub struct BatchLayout {
    pub ids: Vec<u32>,
    pub positions: Vec<i32>,
    /// Where each token's key and value go: block * BLOCK_SIZE + offset.
    pub slots: Vec<u32>,
    /// Each token's row in `block_tables` (its chunk).
    pub query_rows: Vec<u32>,
    /// Tokens each query attends: its position + 1 (causal).
    pub context_lens: Vec<i32>,
    /// `[chunks, max_blocks]`, rows padded with block 0 (never read past the context).
    pub block_tables: Vec<u32>,
    pub max_blocks: usize,
    /// Index of each chunk's last token among all tokens (whose logits are wanted).
    pub last_tokens: Vec<u32>,
}

impl BatchLayout {
    /// Flattens `chunks`; `n_blocks` is the cache's size, to reject a block table that
    /// points outside it.
    pub fn build(chunks: &[Chunk<'_>], n_blocks: usize) -> Result<Self, CudaError> {
        let bad = |message: String| Err(CudaError::BadShape(message));
        let max_blocks = chunks
            .iter()
            .map(|c| c.blocks.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut layout = BatchLayout {
            max_blocks,
            ..BatchLayout::default()
        };
        for (row, chunk) in chunks.iter().enumerate() {
            if chunk.tokens.is_empty() {
                return bad(format!("chunk {row} has no tokens"));
            }
            let end = chunk.start + chunk.tokens.len();
            if end > chunk.blocks.len() * BLOCK_SIZE {
                return bad(format!(
                    "chunk {row} reaches position {end} but has {} blocks",
                    chunk.blocks.len()
                ));
            }
            if let Some(block) = chunk.blocks.iter().find(|&&b| b as usize >= n_blocks) {
                return bad(format!("chunk {row} uses block {block} of {n_blocks}"));
            }
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let position = chunk.start + i;
                layout.ids.push(token);
                layout.positions.push(position_i32(position)?);
                layout.slots.push(
                    chunk.blocks[position / BLOCK_SIZE] * BLOCK_SIZE as u32
                        + (position % BLOCK_SIZE) as u32,
                );
                layout.query_rows.push(row as u32);
                layout.context_lens.push(position_i32(position + 1)?);
            }
            layout.last_tokens.push((layout.ids.len() - 1) as u32);
            layout.block_tables.extend_from_slice(chunk.blocks);
            layout
                .block_tables
                .extend(std::iter::repeat_n(0, max_blocks - chunk.blocks.len()));
        }
        Ok(layout)
    }
}

fn position_i32(position: usize) -> Result<i32, CudaError> {
    i32::try_from(position).map_err(|_| CudaError::BadShape(format!("position {position}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_prompt_chunk_and_a_decode_token_flatten_into_one_step() {
        let prompt = [5, 6, 7];
        let decode = [9];
        let layout = BatchLayout::build(
            &[
                Chunk {
                    tokens: &prompt,
                    start: 15,
                    blocks: &[4, 2],
                },
                Chunk {
                    tokens: &decode,
                    start: 40,
                    blocks: &[1, 3, 0],
                },
            ],
            8,
        )
        .unwrap();
        assert_eq!(layout.ids, [5, 6, 7, 9]);
        assert_eq!(layout.positions, [15, 16, 17, 40]);
        // Position 15 is the last slot of block 4; 16 and 17 start block 2; 40 is slot 8
        // of the third block (0).
        assert_eq!(layout.slots, [4 * 16 + 15, 2 * 16, 2 * 16 + 1, 8]);
        assert_eq!(layout.query_rows, [0, 0, 0, 1]);
        assert_eq!(layout.context_lens, [16, 17, 18, 41]);
        assert_eq!(layout.max_blocks, 3);
        assert_eq!(layout.block_tables, [4, 2, 0, 1, 3, 0]);
        assert_eq!(layout.last_tokens, [2, 3]);
    }

    #[test]
    fn chunks_outside_their_blocks_or_the_cache_are_rejected() {
        let tokens = [1, 2];
        let too_far = Chunk {
            tokens: &tokens,
            start: 15,
            blocks: &[0],
        };
        assert!(BatchLayout::build(&[too_far], 4).is_err());
        let outside = Chunk {
            tokens: &tokens,
            start: 0,
            blocks: &[4],
        };
        assert!(BatchLayout::build(&[outside], 4).is_err());
        let empty = Chunk {
            tokens: &[],
            start: 0,
            blocks: &[0],
        };
        assert!(BatchLayout::build(&[empty], 4).is_err());
        assert_eq!(BatchLayout::build(&[], 4).unwrap().ids, Vec::<u32>::new());
    }
}
