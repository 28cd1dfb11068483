//! The Llama-family decoder (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2 with its
//! attention biases). One forward pass takes a batch of sequence segments of any lengths:
//! prefill chunks and single decode tokens share the matrix multiplications, and attention
//! runs per segment against that sequence's own KV cache.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::backend::cpu::attention::{self, Queries, SequenceRows};
use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;
use crate::model::config::{LlamaConfig, RopeStyle};
use crate::model::kv_cache::{BlockTable, KvPool};
use crate::model::weights::{
    Embedding, Linear, dense_f32, forward_shared, forward_swiglu, map_safetensors_dir,
};

struct Layer {
    attn_norm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    ffn_norm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct LlamaModel {
    config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: Linear,
    /// `[context_length, head_dim / 2]`, row-major.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// Rows rotated per task: a batch of decode steps runs on the calling thread.
const ROPE_ROWS_PER_TASK: usize = 32;

/// One sequence's share of a forward pass: `tokens` continue its cache at `cache.len()`.
/// The caller has given the cache enough blocks for them.
pub struct Segment<'a> {
    pub cache: &'a mut BlockTable,
    pub tokens: &'a [u32],
}

impl LlamaModel {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let qtensor = |name: &str| gguf.tensor(name).map(Arc::new);
        let optional_dense = |name: &str| -> Result<Option<Tensor>> {
            if gguf.has_tensor(name) {
                Ok(Some(dense_f32(&gguf.tensor(name)?)?))
            } else {
                Ok(None)
            }
        };
        let linear = |prefix: &str| -> Result<Linear> {
            Linear::quantized(
                qtensor(&format!("{prefix}.weight"))?,
                optional_dense(&format!("{prefix}.bias"))?,
            )
        };
        let token_embd = qtensor("token_embd.weight")?;
        let lm_head = if gguf.has_tensor("output.weight") {
            linear("output")?
        } else {
            // Tied embeddings (SmolLM2, Qwen2-0.5B): reuse the token table.
            Linear::quantized(token_embd.clone(), None)?
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            layers.push(Layer {
                attn_norm: dense_f32(&gguf.tensor(&format!("{p}.attn_norm.weight"))?)?,
                q_proj: linear(&format!("{p}.attn_q"))?,
                k_proj: linear(&format!("{p}.attn_k"))?,
                v_proj: linear(&format!("{p}.attn_v"))?,
                o_proj: linear(&format!("{p}.attn_output"))?,
                ffn_norm: dense_f32(&gguf.tensor(&format!("{p}.ffn_norm.weight"))?)?,
                gate_proj: linear(&format!("{p}.ffn_gate"))?,
                up_proj: linear(&format!("{p}.ffn_up"))?,
                down_proj: linear(&format!("{p}.ffn_down"))?,
            });
        }
        let rope_freq_factors = optional_dense("rope_freqs.weight")?;
        let (rope_cos, rope_sin) = rope_tables(&config, rope_freq_factors.as_ref())?;
        Ok(Self {
            embed_tokens: Embedding::Quantized(token_embd),
            final_norm: dense_f32(&gguf.tensor("output_norm.weight")?)?,
            lm_head,
            layers,
            rope_cos,
            rope_sin,
            config,
        })
    }

    /// A Hugging Face checkpoint directory: `config.json` and `*.safetensors`.
    pub fn from_safetensors_dir(dir: &Path) -> Result<Self> {
        let config = LlamaConfig::from_hf_config(&dir.join("config.json"))?;
        let st = map_safetensors_dir(dir)?;
        let has = |name: &str| st.get(name).is_ok();
        let load = |name: &str| -> Result<Tensor> {
            st.load(name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| EngineError::bad_model(dir, format!("tensor {name}: {e}")))
        };
        let linear = |prefix: &str| -> Result<Linear> {
            let bias_name = format!("{prefix}.bias");
            let bias = if has(&bias_name) {
                Some(load(&bias_name)?)
            } else {
                None
            };
            Linear::dense(load(&format!("{prefix}.weight"))?, bias)
        };
        let embed = load("model.embed_tokens.weight")?;
        let lm_head = if has("lm_head.weight") {
            linear("lm_head")?
        } else {
            Linear::dense(embed.clone(), None)?
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: load(&format!("{p}.input_layernorm.weight"))?,
                q_proj: linear(&format!("{p}.self_attn.q_proj"))?,
                k_proj: linear(&format!("{p}.self_attn.k_proj"))?,
                v_proj: linear(&format!("{p}.self_attn.v_proj"))?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"))?,
                ffn_norm: load(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: linear(&format!("{p}.mlp.gate_proj"))?,
                up_proj: linear(&format!("{p}.mlp.up_proj"))?,
                down_proj: linear(&format!("{p}.mlp.down_proj"))?,
            });
        }
        let (rope_cos, rope_sin) = rope_tables(&config, None)?;
        Ok(Self {
            embed_tokens: Embedding::Dense(embed),
            final_norm: load("model.norm.weight")?,
            lm_head,
            layers,
            rope_cos,
            rope_sin,
            config,
        })
    }

    /// Whether every token's result is the same bits however the batch around it is
    /// shaped: true when our kernels do every matrix product (norms, RoPE and attention
    /// work row by row in one order everywhere). Candle's kernels make no such promise.
    pub fn rows_independent(&self) -> bool {
        self.lm_head.in_own_kernels()
            && self.layers.iter().all(|l| {
                [
                    &l.q_proj,
                    &l.k_proj,
                    &l.v_proj,
                    &l.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ]
                .iter()
                .all(|linear| linear.in_own_kernels())
            })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// A KV pool of `n_blocks` blocks for this model.
    pub fn new_kv_pool(&self, n_blocks: usize) -> KvPool {
        KvPool::new(&self.config, n_blocks)
    }

    /// Runs the segments through the model and returns the logits of each segment's last
    /// token, `[segments.len(), vocab]`. Every segment's cache grows by its token count.
    pub fn forward(&self, pool: &mut KvPool, segments: &mut [Segment<'_>]) -> Result<Tensor> {
        let cfg = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(segments.len());
        for seg in segments.iter() {
            if seg.tokens.is_empty() {
                return Err(EngineError::InvalidParameter {
                    param: "tokens",
                    message: "empty segment".into(),
                });
            }
            let start = seg.cache.len();
            if start + seg.tokens.len() > cfg.context_length {
                return Err(EngineError::InputTooLong {
                    len: start + seg.tokens.len(),
                    limit: cfg.context_length,
                });
            }
            if start + seg.tokens.len() > seg.cache.capacity() {
                return Err(EngineError::ForwardFailed(format!(
                    "a sequence was scheduled {} tokens with room for {}",
                    seg.tokens.len(),
                    seg.cache.capacity() - start
                )));
            }
            ids.extend_from_slice(seg.tokens);
            positions.extend((start..start + seg.tokens.len()).map(|p| p as u32));
            last_rows.push((ids.len() - 1) as u32);
        }
        let n = ids.len();
        let device = Device::Cpu;
        let ids = Tensor::from_vec(ids, n, &device)?;

        let mut hidden = self.embed_tokens.forward(&ids)?;
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let normed =
                candle_nn::ops::rms_norm(&hidden, &layer.attn_norm, cfg.rms_norm_eps as f32)?;
            let [q, k, v] = forward_shared([&layer.q_proj, &layer.k_proj, &layer.v_proj], &normed)?;
            // Row-major `[n, heads, head_dim]` from here on: no transposes.
            let mut q = q.flatten_all()?.to_vec1::<f32>()?;
            let mut k = k.flatten_all()?.to_vec1::<f32>()?;
            let v = v.flatten_all()?.to_vec1::<f32>()?;
            self.rope(&mut q, &positions);
            self.rope(&mut k, &positions);
            let (kv_heads, d) = (cfg.n_kv_heads, cfg.head_dim);
            // Each segment's new keys and values into its blocks, in order...
            let mut spans = Vec::with_capacity(segments.len());
            let mut offset = 0;
            for seg in segments.iter_mut() {
                let (start, len) = (seg.cache.len(), seg.tokens.len());
                let rows = offset * kv_heads * d..(offset + len) * kv_heads * d;
                pool.write(layer_idx, seg.cache, start, &k[rows.clone()], &v[rows]);
                spans.push((offset, start, len));
                offset += len;
            }
            // ...then attention, reading the blocks in place.
            let sequences: Vec<SequenceRows<'_>> = segments
                .iter()
                .zip(&spans)
                .map(|(seg, &(offset, start, len))| SequenceRows {
                    table: &*seg.cache,
                    offset,
                    start,
                    len,
                })
                .collect();
            let queries = Queries {
                values: &q,
                n,
                heads: cfg.n_heads,
                kv_heads,
                head_dim: d,
            };
            let attn = attention::attend(pool, layer_idx, &queries, &sequences);
            let attn = Tensor::from_vec(attn, (n, cfg.n_heads * d), &device)?;
            hidden = (hidden + layer.o_proj.forward(&attn)?)?;

            let normed =
                candle_nn::ops::rms_norm(&hidden, &layer.ffn_norm, cfg.rms_norm_eps as f32)?;
            let gated = forward_swiglu(&layer.gate_proj, &layer.up_proj, &normed)?;
            hidden = (hidden + layer.down_proj.forward(&gated)?)?;
        }
        for seg in segments.iter_mut() {
            seg.cache.advance(seg.tokens.len());
        }
        let last_rows = Tensor::from_vec(last_rows, segments.len(), &device)?;
        let last = hidden.index_select(&last_rows, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, cfg.rms_norm_eps as f32)?;
        self.lm_head.forward(&last)
    }

    /// Rotates `[n, heads, head_dim]` rows in place, row `i` by `positions[i]`, as candle's
    /// `rope`/`rope_i` compute it.
    fn rope(&self, xs: &mut [f32], positions: &[u32]) {
        let d = self.config.head_dim;
        let half = d / 2;
        let row = xs.len() / positions.len().max(1);
        let style = self.config.rope_style;
        // A decode step's few rows are less work than waking another thread for them.
        xs.par_chunks_mut(row)
            .with_min_len(ROPE_ROWS_PER_TASK)
            .zip(positions)
            .for_each(|(row, &position)| {
                let at = position as usize * half;
                let (cos, sin) = (&self.rope_cos[at..at + half], &self.rope_sin[at..at + half]);
                for head in row.chunks_exact_mut(d) {
                    for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                        let (i1, i2) = match style {
                            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                            RopeStyle::Halves => (i, i + half),
                        };
                        let (a, b) = (head[i1], head[i2]);
                        head[i1] = a * c - b * s;
                        head[i2] = a * s + b * c;
                    }
                }
            });
    }
}

/// The cosines and sines of every position's rotation angles, `[context_length, head_dim /
/// 2]` each.
fn rope_tables(
    config: &LlamaConfig,
    freq_factors: Option<&Tensor>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let half = config.head_dim / 2;
    let factors: Vec<f32> = match freq_factors {
        Some(t) => t.flatten_all()?.to_vec1::<f32>()?,
        None => vec![1.0; half],
    };
    let inv_freq: Vec<f32> = config
        .inv_freq()
        .into_iter()
        .enumerate()
        .map(|(i, base)| base / factors.get(i).copied().unwrap_or(1.0))
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), &Device::Cpu)?;
    let positions = Tensor::arange(0u32, config.context_length as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles = positions.matmul(&inv_freq)?;
    let table = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
    Ok((table(angles.cos()?)?, table(angles.sin()?)?))
}

/// The index of the largest logit; ties go to the lowest index, as in llama.cpp. NaNs are
/// never picked (0 if every logit is NaN).
pub fn argmax(logits: &[f32]) -> u32 {
    // The maximum over eight independent lanes (which vectorizes), then its first position.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    let max = lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_skips_nans() {
        let mut logits: Vec<f32> = (0..37).map(|i| (i % 7) as f32).collect();
        assert_eq!(argmax(&logits), 6);
        logits[30] = 9.0;
        logits[35] = 9.0;
        assert_eq!(argmax(&logits), 30);
        logits[3] = f32::NAN;
        assert_eq!(argmax(&logits), 30);
        logits[36] = 10.0; // in the tail past the last whole chunk of eight
        assert_eq!(argmax(&logits), 36);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 5]), 0);
        assert_eq!(argmax(&[f32::NAN; 3]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
