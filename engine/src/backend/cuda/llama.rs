//! The Llama forward pass on the CUDA backend: bf16 weights from a `DenseCheckpoint`
//! (safetensors as they are, GGUF dequantized; gate and up fused into one matrix), a paged bf16 KV cache in the
//! CPU path's `[block][kv_head][slot][head_dim]` layout, and one step over any mix of
//! prompt chunks and decode tokens. Each step returns the logits of each chunk's last
//! token.

use std::path::Path;

use cudarc::driver::CudaSlice;
use half::bf16;

use super::batch::{BatchLayout, Chunk};
use super::ops::{AttentionShape, BLOCK_SIZE};
use super::{CudaBackend, CudaError};
use crate::model::config::LlamaConfig;
use crate::model::dense::DenseCheckpoint;

/// How much GPU memory the KV cache gets.
#[derive(Debug, Clone, Copy)]
pub enum KvBudget {
    Blocks(usize),
    /// As vLLM's `gpu_memory_utilization`: the share of the GPU's memory this model may
    /// use in all; the KV cache gets what its weights and a 1 GiB work area leave, and
    /// never more than is free.
    GpuMemoryUtilization(f32),
}

const WORK_AREA_BYTES: usize = 1 << 30;

struct Layer {
    attn_norm: CudaSlice<bf16>,
    wq: CudaSlice<bf16>,
    wk: CudaSlice<bf16>,
    wv: CudaSlice<bf16>,
    wo: CudaSlice<bf16>,
    mlp_norm: CudaSlice<bf16>,
    /// `[2 * ffn, hidden]`: gate rows, then up rows.
    w_gate_up: CudaSlice<bf16>,
    w_down: CudaSlice<bf16>,
}

pub struct CudaLlama {
    gpu: CudaBackend,
    config: LlamaConfig,
    embed: CudaSlice<bf16>,
    layers: Vec<Layer>,
    norm: CudaSlice<bf16>,
    /// `None` when the embeddings are tied.
    lm_head: Option<CudaSlice<bf16>>,
    inv_freq: CudaSlice<f32>,
    k_cache: Vec<CudaSlice<bf16>>,
    v_cache: Vec<CudaSlice<bf16>>,
    n_blocks: usize,
    weight_bytes: usize,
}

impl CudaLlama {
    /// Loads a Hugging Face Llama checkpoint (`config.json`, `*.safetensors`) onto the GPU.
    pub fn load_safetensors(dir: &Path, gpu: CudaBackend, kv: KvBudget) -> Result<Self, CudaError> {
        Self::load(&DenseCheckpoint::safetensors(dir)?, gpu, kv)
    }

    /// Uploads a checkpoint's weights as bf16 (GGUF ones dequantized) and allocates the KV
    /// cache.
    pub fn load(
        checkpoint: &DenseCheckpoint<'_>,
        gpu: CudaBackend,
        kv: KvBudget,
    ) -> Result<Self, CudaError> {
        let config = checkpoint.config().clone();
        for i in 0..config.n_layers {
            for proj in ["q_proj", "k_proj", "v_proj"] {
                if checkpoint.has(&format!("model.layers.{i}.self_attn.{proj}.bias")) {
                    return Err(CudaError::Unsupported(
                        "attention biases (Qwen2) are not supported on CUDA yet".into(),
                    ));
                }
            }
        }
        let mut weight_bytes = 0;
        let mut host = |name: &str| -> Result<Vec<bf16>, CudaError> {
            let values = checkpoint.tensor(name)?;
            weight_bytes += values.len() * 2;
            Ok(values)
        };
        let stream = gpu.stream.clone();
        let up = |values: Vec<bf16>| stream.clone_htod(&values);
        let embed = up(host("model.embed_tokens.weight")?)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            let mut gate_up = host(&format!("{p}.mlp.gate_proj.weight"))?;
            gate_up.extend(host(&format!("{p}.mlp.up_proj.weight"))?);
            layers.push(Layer {
                attn_norm: up(host(&format!("{p}.input_layernorm.weight"))?)?,
                wq: up(host(&format!("{p}.self_attn.q_proj.weight"))?)?,
                wk: up(host(&format!("{p}.self_attn.k_proj.weight"))?)?,
                wv: up(host(&format!("{p}.self_attn.v_proj.weight"))?)?,
                wo: up(host(&format!("{p}.self_attn.o_proj.weight"))?)?,
                mlp_norm: up(host(&format!("{p}.post_attention_layernorm.weight"))?)?,
                w_gate_up: up(gate_up)?,
                w_down: up(host(&format!("{p}.mlp.down_proj.weight"))?)?,
            });
        }
        let norm = up(host("model.norm.weight")?)?;
        let lm_head = if checkpoint.has("lm_head.weight") {
            Some(up(host("lm_head.weight")?)?)
        } else {
            None
        };
        let inv_freq = stream.clone_htod(&checkpoint.inv_freq()?)?;
        let block_bytes = 2 * config.n_kv_heads * BLOCK_SIZE * config.head_dim * 2;
        let n_blocks = match kv {
            KvBudget::Blocks(n) => n,
            KvBudget::GpuMemoryUtilization(share) => {
                // The weights are on the GPU already, so `free` is what is left after them
                // and after everything else on the device (other models, other processes).
                let (free, total) = stream.context().mem_get_info()?;
                let allowed = (total as f64 * f64::from(share.clamp(0.01, 1.0))) as usize;
                let within_share = allowed.saturating_sub(weight_bytes + WORK_AREA_BYTES);
                let available = free.saturating_sub(WORK_AREA_BYTES);
                within_share.min(available) / (block_bytes * config.n_layers)
            }
        };
        if n_blocks == 0 {
            return Err(CudaError::Unavailable(
                "no GPU memory is left for the KV cache after the weights".into(),
            ));
        }
        let per_layer = n_blocks * BLOCK_SIZE * config.n_kv_heads * config.head_dim;
        let mut k_cache = Vec::with_capacity(config.n_layers);
        let mut v_cache = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            k_cache.push(stream.alloc_zeros::<bf16>(per_layer)?);
            v_cache.push(stream.alloc_zeros::<bf16>(per_layer)?);
        }
        Ok(Self {
            gpu,
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            k_cache,
            v_cache,
            n_blocks,
            weight_bytes,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn gpu(&self) -> &CudaBackend {
        &self.gpu
    }

    /// Blocks of `BLOCK_SIZE` tokens the KV cache holds.
    pub fn kv_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Weight bytes one decode step reads: all but the embedding table, of which only the
    /// tokens' rows are gathered (unless it doubles as the LM head).
    pub fn weight_bytes_read_per_step(&self) -> usize {
        match self.lm_head {
            Some(_) => self.weight_bytes - self.embed.len() * 2,
            None => self.weight_bytes,
        }
    }

    /// Runs one step and returns `[chunks, vocab]` f32 logits of each chunk's last token,
    /// left on the GPU.
    pub fn forward_chunks(&mut self, chunks: &[Chunk<'_>]) -> Result<CudaSlice<f32>, CudaError> {
        // The engine loop runs on another thread than the one that loaded the model.
        self.gpu.stream.context().bind_to_thread()?;
        let layout = BatchLayout::build(chunks, self.n_blocks)?;
        let c = &self.config;
        let (t, h, ffn) = (layout.ids.len(), c.hidden_size, c.ffn_size);
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let eps = c.rms_norm_eps as f32;
        let stream = self.gpu.stream.clone();
        let (k, g) = (&self.gpu.kernels, &self.gpu.gemm);
        let vocab = c.vocab_size;
        let mut logits = stream.alloc_zeros::<f32>(chunks.len() * vocab)?;
        if t == 0 {
            return Ok(logits);
        }
        let ids = stream.clone_htod(&layout.ids)?;
        let positions = stream.clone_htod(&layout.positions)?;
        let slots = stream.clone_htod(&layout.slots)?;
        let query_rows = stream.clone_htod(&layout.query_rows)?;
        let context_lens = stream.clone_htod(&layout.context_lens)?;
        let block_tables = stream.clone_htod(&layout.block_tables)?;
        let last_tokens = stream.clone_htod(&layout.last_tokens)?;

        let mut x = stream.alloc_zeros::<bf16>(t * h)?;
        let mut normed = stream.alloc_zeros::<bf16>(t * h)?;
        let mut q = stream.alloc_zeros::<bf16>(t * q_dim)?;
        let mut kk = stream.alloc_zeros::<bf16>(t * kv_dim)?;
        let mut v = stream.alloc_zeros::<bf16>(t * kv_dim)?;
        let mut attn = stream.alloc_zeros::<bf16>(t * q_dim)?;
        let mut proj = stream.alloc_zeros::<bf16>(t * h)?;
        let mut gate_up = stream.alloc_zeros::<bf16>(t * 2 * ffn)?;
        let mut act = stream.alloc_zeros::<bf16>(t * ffn)?;

        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            max_blocks: layout.max_blocks,
        };
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        k.embedding_gather(&self.embed, &ids, &mut x, h)?;
        let Some(first) = self.layers.first() else {
            return Err(CudaError::BadShape("the model has no layers".into()));
        };
        k.rms_norm(&x, &first.attn_norm, &mut normed, h, eps)?;
        for (l, layer) in self.layers.iter().enumerate() {
            g.matmul_bf16(&normed, &layer.wq, &mut q, t, q_dim, h)?;
            g.matmul_bf16(&normed, &layer.wk, &mut kk, t, kv_dim, h)?;
            g.matmul_bf16(&normed, &layer.wv, &mut v, t, kv_dim, h)?;
            k.rope(
                &mut q,
                &mut kk,
                &positions,
                &self.inv_freq,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
            )?;
            k.kv_cache_write(
                &kk,
                &v,
                &mut self.k_cache[l],
                &mut self.v_cache[l],
                &slots,
                c.n_kv_heads,
                c.head_dim,
            )?;
            k.paged_attention(
                &q,
                &self.k_cache[l],
                &self.v_cache[l],
                &block_tables,
                &query_rows,
                &context_lens,
                &mut attn,
                shape,
                scale,
            )?;
            g.matmul_bf16(&attn, &layer.wo, &mut proj, t, h, q_dim)?;
            k.add_rms_norm(&mut x, &proj, &layer.mlp_norm, &mut normed, h, eps)?;
            g.matmul_bf16(&normed, &layer.w_gate_up, &mut gate_up, t, 2 * ffn, h)?;
            k.silu_mul(&gate_up, &mut act, t, ffn)?;
            g.matmul_bf16(&act, &layer.w_down, &mut proj, t, h, ffn)?;
            let next_norm = self
                .layers
                .get(l + 1)
                .map_or(&self.norm, |next| &next.attn_norm);
            k.add_rms_norm(&mut x, &proj, next_norm, &mut normed, h, eps)?;
        }
        // The last token of each chunk: a row gather, as for the embeddings.
        let mut last = stream.alloc_zeros::<bf16>(chunks.len() * h)?;
        k.embedding_gather(&normed, &last_tokens, &mut last, h)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        g.matmul_f32_out(&last, head, &mut logits, chunks.len(), vocab, h)?;
        Ok(logits)
    }
}
