//! `BlockAllocator`: ownership of the KV pool's blocks, with automatic prefix caching.
//! A block holding a full, content-addressed piece of some prompt keeps its hash; when the
//! last sequence using it lets go, it stays cached in an LRU order instead of being wiped,
//! and a later prompt with the same prefix takes it back instead of recomputing it. Blocks
//! are only evicted (their hash forgotten) when no blank block is left.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// A block's identity: a hash chained over its tokens and its parent block's hash.
pub(crate) type BlockHash = u128;

/// The hash of a block of `tokens` that follows a block hashed `parent` (None for the first).
pub(crate) fn chain_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    // Two independently salted 64-bit SipHashes: a collision would silently serve another
    // prompt's cache, so 64 bits alone are too few.
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        parent.hash(&mut hasher);
        tokens.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

pub(crate) struct BlockAllocator {
    /// Blocks with no content worth keeping.
    blank: Vec<u32>,
    /// Unreferenced blocks that still hold a cached prefix, oldest release first.
    evictable: BTreeMap<u64, u32>,
    refs: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    /// The tick at which an evictable block was released (its key in `evictable`).
    released_at: Vec<u64>,
    by_hash: HashMap<BlockHash, u32>,
    tick: u64,
}

impl BlockAllocator {
    pub(crate) fn new(n_blocks: usize) -> Self {
        Self {
            blank: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            refs: vec![0; n_blocks],
            hash_of: vec![None; n_blocks],
            released_at: vec![0; n_blocks],
            by_hash: HashMap::new(),
            tick: 0,
        }
    }

    /// Blocks that can be handed out now (blank or evictable).
    pub(crate) fn available(&self) -> usize {
        self.blank.len() + self.evictable.len()
    }

    /// Blocks some sequence holds.
    pub(crate) fn in_use(&self) -> usize {
        self.refs.len() - self.available()
    }

    /// `n` blocks for new content, or None (and nothing taken) if there are not enough.
    pub(crate) fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.available() {
            return None;
        }
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let block = match self.blank.pop() {
                Some(block) => block,
                None => {
                    let (_, block) = self.evictable.pop_first()?;
                    if let Some(hash) = self.hash_of[block as usize].take() {
                        self.by_hash.remove(&hash);
                    }
                    block
                }
            };
            self.refs[block as usize] = 1;
            blocks.push(block);
        }
        Some(blocks)
    }

    /// The cached block with this content, now also held by the caller.
    pub(crate) fn reuse(&mut self, hash: BlockHash) -> Option<u32> {
        let block = *self.by_hash.get(&hash)?;
        let refs = &mut self.refs[block as usize];
        if *refs == 0 {
            self.evictable.remove(&self.released_at[block as usize]);
        }
        *refs += 1;
        Some(block)
    }

    /// Records that `block` now holds the content `hash` (first writer wins).
    pub(crate) fn register(&mut self, block: u32, hash: BlockHash) {
        if self.hash_of[block as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.by_hash.insert(hash, block);
            self.hash_of[block as usize] = Some(hash);
        }
    }

    /// Lets go of blocks; those holding cached content stay reusable until evicted.
    pub(crate) fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        for block in blocks {
            let refs = &mut self.refs[block as usize];
            *refs = refs.saturating_sub(1);
            if *refs > 0 {
                continue;
            }
            if self.hash_of[block as usize].is_some() {
                self.tick += 1;
                self.released_at[block as usize] = self.tick;
                self.evictable.insert(self.tick, block);
            } else {
                self.blank.push(block);
            }
        }
    }
}
