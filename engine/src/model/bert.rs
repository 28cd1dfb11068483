//! `SentenceEmbedder`: a BERT encoder (e.g. all-MiniLM-L6-v2) from a safetensors directory,
//! with mean pooling over the attention mask and L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::error::{EngineError, Result};
use crate::tokenizer::{SpecialTokens, TextTokenizer};

pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: TextTokenizer,
    max_tokens: usize,
    dimensions: usize,
}

impl SentenceEmbedder {
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| EngineError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| EngineError::bad_model(&config_path, format!("config.json: {e}")))?;
        let weights = dir.join("model.safetensors");
        // SAFETY: a read-only mapping of a file we do not modify.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
                .map_err(|e| EngineError::bad_model(&weights, e.to_string()))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| EngineError::bad_model(&weights, e.to_string()))?;
        let tokenizer =
            TextTokenizer::from_file(&dir.join("tokenizer.json"), SpecialTokens::default())?;
        Ok(Self {
            model,
            tokenizer,
            max_tokens: config.max_position_embeddings,
            dimensions: config.hidden_size,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token count of one input, including the `[CLS]`/`[SEP]` the model adds.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text)?.len())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .inner()
            .encode_fast(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Embeds each text into a unit vector. Inputs longer than the model's window are an
    /// error, never silently truncated.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let encoded = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        if let Some(len) = encoded.iter().map(Vec::len).find(|&l| l > self.max_tokens) {
            return Err(EngineError::InputTooLong {
                len,
                limit: self.max_tokens,
            });
        }
        let width = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let batch = encoded.len();
        let mut ids = vec![0u32; batch * width];
        let mut mask = vec![0f32; batch * width];
        for (row, tokens) in encoded.iter().enumerate() {
            ids[row * width..row * width + tokens.len()].copy_from_slice(tokens);
            mask[row * width..row * width + tokens.len()].fill(1.0);
        }
        let device = Device::Cpu;
        let ids = Tensor::from_vec(ids, (batch, width), &device)?;
        let mask = Tensor::from_vec(mask, (batch, width), &device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over real tokens only, then L2-normalise.
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let counts = mask.sum_keepdim(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = mean.broadcast_div(&norms)?;
        Ok(unit.to_vec2::<f32>()?)
    }
}
