//! `TextTokenizer`: encoding, decoding and streaming detokenization over a Hugging Face
//! `tokenizers::Tokenizer`, plus the special tokens the engine needs (BOS, end of turn).

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// Prepended to every prompt when the model asks for it.
    pub bos: Option<u32>,
    /// The BOS and EOS token texts, for chat templates.
    pub bos_text: Option<String>,
    pub eos_text: Option<String>,
    /// Generation stops on any of these.
    pub end_of_turn: Vec<u32>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
}

impl TextTokenizer {
    pub fn new(inner: Tokenizer, special: SpecialTokens) -> Self {
        Self { inner, special }
    }

    /// Loads a `tokenizer.json`; the end-of-turn tokens are given by the caller.
    /// Padding and truncation settings in the file are dropped: the engine pads batches
    /// itself and refuses over-long inputs rather than cutting them.
    pub fn from_file(path: &Path, special: SpecialTokens) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| EngineError::bad_model(path, format!("tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| EngineError::bad_model(path, format!("tokenizer.json: {e}")))?;
        Ok(Self { inner, special })
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// The vocabulary entry for `id` (e.g. `Ġworld` in byte-level BPE).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text; special-token text such as `<|im_start|>` becomes its special token.
    /// Adds no BOS: see [`TextTokenizer::encode_prompt`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a whole prompt, adding BOS when the model wants one and the text lacks it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let Some(bos) = self.special.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| EngineError::Tokenizer(format!("saving {}: {e}", path.display())))
    }

    pub(crate) fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of token ids into text deltas, holding back bytes that do not yet
/// form a complete UTF-8 character (byte-level BPE splits multi-byte characters).
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window that is re-decoded for context (leading-space handling).
    prefix_offset: usize,
    /// End of the part of the window already emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = full
                .get(prefix.len()..)
                .map(str::to_string)
                .unwrap_or_default();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}
