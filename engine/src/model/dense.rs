//! `DenseCheckpoint`: a Llama-family checkpoint read tensor by tensor as dense bf16, under
//! Hugging Face's names and in its layout, whatever the file format. Safetensors are
//! converted to bf16 as they are; GGUF tensors are dequantized, and llama.cpp's permutation
//! of the Q and K rows (its interleaved rotary pairs) is undone so that every backend that
//! reads this rotates halves, as Hugging Face does. The CUDA backend uploads from here.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use half::bf16;

use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;
use crate::model::config::{LlamaConfig, RopeStyle};
use crate::model::weights::map_safetensors_dir;

pub enum DenseCheckpoint<'a> {
    Safetensors {
        dir: PathBuf,
        config: LlamaConfig,
        tensors: MmapedSafetensors,
    },
    Gguf {
        gguf: &'a GgufFile,
        config: LlamaConfig,
    },
}

impl<'a> DenseCheckpoint<'a> {
    /// A Hugging Face directory: `config.json` and `*.safetensors`.
    pub fn safetensors(dir: &Path) -> Result<Self> {
        Ok(Self::Safetensors {
            config: LlamaConfig::from_hf_config(&dir.join("config.json"))?,
            tensors: map_safetensors_dir(dir)?,
            dir: dir.to_path_buf(),
        })
    }

    pub fn gguf(gguf: &'a GgufFile) -> Result<Self> {
        Ok(Self::Gguf {
            config: LlamaConfig::from_gguf(gguf)?,
            gguf,
        })
    }

    /// The model's shape. Its `rope_style` is the file's; tensors from `tensor` always
    /// rotate halves.
    pub fn config(&self) -> &LlamaConfig {
        match self {
            Self::Safetensors { config, .. } | Self::Gguf { config, .. } => config,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Safetensors { dir, .. } => dir,
            Self::Gguf { gguf, .. } => gguf.path(),
        }
    }

    pub fn has(&self, hf_name: &str) -> bool {
        match self {
            Self::Safetensors { tensors, .. } => tensors.get(hf_name).is_ok(),
            Self::Gguf { gguf, .. } => {
                gguf_name(hf_name).is_some_and(|name| gguf.has_tensor(&name))
            }
        }
    }

    /// The tensor Hugging Face calls `hf_name`, flattened row-major as bf16.
    pub fn tensor(&self, hf_name: &str) -> Result<Vec<bf16>> {
        let bad = |e: candle_core::Error| {
            EngineError::bad_model(self.path(), format!("tensor {hf_name}: {e}"))
        };
        let tensor = match self {
            Self::Safetensors { tensors, .. } => {
                tensors.load(hf_name, &Device::Cpu).map_err(bad)?
            }
            Self::Gguf { gguf, config } => {
                let name = gguf_name(hf_name).ok_or_else(|| {
                    EngineError::bad_model(gguf.path(), format!("no GGUF name for {hf_name}"))
                })?;
                let dense = gguf.tensor(&name)?.dequantize(&Device::Cpu).map_err(bad)?;
                let heads = if hf_name.ends_with("self_attn.q_proj.weight") {
                    Some(config.n_heads)
                } else if hf_name.ends_with("self_attn.k_proj.weight") {
                    Some(config.n_kv_heads)
                } else {
                    None
                };
                match heads {
                    Some(heads) if config.rope_style == RopeStyle::Interleaved => {
                        interleaved_to_halves(&dense, heads).map_err(bad)?
                    }
                    _ => dense,
                }
            }
        };
        tensor
            .to_dtype(DType::BF16)
            .and_then(|t| t.flatten_all()?.to_vec1::<bf16>())
            .map_err(bad)
    }

    /// The rotary inverse frequencies, with llama.cpp's per-frequency factors
    /// (`rope_freqs.weight`, Llama 3.1 in GGUF) applied.
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        let mut inv_freq = self.config().inv_freq();
        if let Self::Gguf { gguf, .. } = self
            && gguf.has_tensor("rope_freqs.weight")
        {
            let factors = gguf
                .tensor("rope_freqs.weight")?
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (f, factor) in inv_freq.iter_mut().zip(factors) {
                *f /= factor;
            }
        }
        Ok(inv_freq)
    }
}

/// llama.cpp's name for a Hugging Face Llama tensor.
fn gguf_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf_module = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf_module}.{kind}"))
}

/// Undoes llama.cpp's permutation of Q/K rows: within each head, GGUF row `2i + h` is
/// Hugging Face row `h * d/2 + i`.
fn interleaved_to_halves(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, input) = w.dims2()?;
    w.reshape((heads, out / heads / 2, 2, input))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hugging_face_names_to_llama_cpp_names() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias"),
            (
                "model.layers.11.mlp.down_proj.weight",
                "blk.11.ffn_down.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
        ];
        for (hf, gguf) in cases {
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
        assert_eq!(gguf_name("model.layers.0.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn unpermutes_rows_within_each_head() {
        // Two heads of head_dim 4, one column: GGUF rows [a0 b0 a1 b1] per head, where a
        // is HF's first half and b its second.
        let gguf = Tensor::from_vec(
            vec![0f32, 2., 1., 3., 10., 12., 11., 13.],
            (8, 1),
            &Device::Cpu,
        )
        .unwrap();
        let hf = interleaved_to_halves(&gguf, 2).unwrap();
        assert_eq!(
            hf.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 1., 2., 3., 10., 11., 12., 13.]
        );
    }
}
