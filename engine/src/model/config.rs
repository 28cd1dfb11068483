//! `LlamaConfig`: the resolved shape of a Llama-family model, read from GGUF metadata or
//! from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's GGUF layout for Llama models.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints, and Qwen2 in GGUF.
    Halves,
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// Llama 3.1's frequency scaling, when the checkpoint asks for it.
    pub rope_llama3: Option<Llama3RopeScaling>,
    pub context_length: usize,
}

/// `rope_type: llama3` (Llama 3.1 and later): long wavelengths slowed by `factor`,
/// short ones kept, and a smooth blend between.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

impl LlamaConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.required_string("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(EngineError::bad_model(
                gguf.path(),
                format!("architecture {arch:?} is not in the Llama family (llama, qwen2, mistral)"),
            ));
        }
        let key = |name: &str| format!("{arch}.{name}");
        let hidden_size = gguf.required_usize(&key("embedding_length"))?;
        let n_heads = gguf.required_usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf
            .required_usize(&key("attention.head_count_kv"))
            .unwrap_or(n_heads);
        let head_dim = gguf
            .u32(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = gguf.array("tokenizer.ggml.tokens")?.len();
        let config = Self {
            n_layers: gguf.required_usize(&key("block_count"))?,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: gguf.required_usize(&key("feed_forward_length"))?,
            vocab_size,
            rms_norm_eps: f64::from(
                gguf.f32(&key("attention.layer_norm_rms_epsilon"))
                    .unwrap_or(1e-5),
            ),
            rope_theta: gguf.f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_llama3: None,
            rope_style: if arch == "qwen2" {
                RopeStyle::Halves
            } else {
                RopeStyle::Interleaved
            },
            context_length: gguf.required_usize(&key("context_length"))?,
            architecture: arch,
        };
        config.validate(gguf.path())
    }

    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: HfLlamaConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::bad_model(path, format!("config.json: {e}")))?;
        let architecture = raw.model_type.unwrap_or_else(|| "llama".to_string());
        if !matches!(architecture.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(EngineError::bad_model(
                path,
                format!("model_type {architecture:?} is not in the Llama family"),
            ));
        }
        let n_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        // transformers 5 writes `rope_parameters`; earlier versions `rope_theta` and
        // `rope_scaling`.
        let rope = raw.rope_parameters.or(raw.rope_scaling).unwrap_or_default();
        let rope_llama3 = match rope.rope_type.as_deref().or(rope.type_.as_deref()) {
            None | Some("default") => None,
            Some("llama3") => Some(Llama3RopeScaling {
                factor: rope.factor.unwrap_or(1.0),
                low_freq_factor: rope.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: rope.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .unwrap_or(8192.0),
            }),
            Some(other) => {
                return Err(EngineError::bad_model(
                    path,
                    format!("rope type {other:?} is not supported (default, llama3 are)"),
                ));
            }
        };
        let config = Self {
            architecture,
            n_layers: raw.num_hidden_layers,
            hidden_size: raw.hidden_size,
            n_heads: raw.num_attention_heads,
            n_kv_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            ffn_size: raw.intermediate_size,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            rope_theta: rope.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0),
            rope_style: RopeStyle::Halves,
            rope_llama3,
            context_length: raw.max_position_embeddings.unwrap_or(4096),
        };
        config.validate(path)
    }

    fn validate(self, path: &Path) -> Result<Self> {
        let ok = self.n_heads > 0
            && self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && self.head_dim.is_multiple_of(2)
            && self.n_layers > 0
            && self.context_length > 0;
        if ok {
            Ok(self)
        } else {
            Err(EngineError::bad_model(
                path,
                format!("inconsistent model shape: {self:?}"),
            ))
        }
    }

    /// The rotary inverse frequencies (head_dim / 2), computed as transformers does in f32,
    /// with Llama 3 scaling applied when configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f32;
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf((2 * i) as f32 / d);
                match self.rope_llama3 {
                    None => base,
                    Some(s) => llama3_scaled(base, s),
                }
            })
            .collect()
    }

    /// Bytes of KV cache one token takes at f32: the paged pool stores exactly this.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * std::mem::size_of::<half::f16>()
    }
}

fn llama3_scaled(inv_freq: f32, s: Llama3RopeScaling) -> f32 {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    if wavelen > low_wavelen {
        inv_freq / s.factor
    } else if wavelen < high_wavelen {
        inv_freq
    } else {
        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

#[derive(Deserialize, Default)]
struct HfRopeParameters {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<f32>,
}

#[derive(Deserialize)]
struct HfLlamaConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    rope_parameters: Option<HfRopeParameters>,
    rope_scaling: Option<HfRopeParameters>,
    max_position_embeddings: Option<usize>,
}
