//! Weight access shared by the GGUF and safetensors loaders: quantized or dense matrices
//! behind one `Linear`, and embeddings that dequantize only the rows they look up.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::error::Result;

pub(crate) struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight: QMatMul::from_arc(weight)?,
            bias,
        })
    }

    pub(crate) fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight: QMatMul::Tensor(weight.to_dtype(DType::F32)?),
            bias,
        })
    }

    /// `[n, in] -> [n, out]`
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = self.weight.forward(xs)?;
        Ok(match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        })
    }
}

pub(crate) enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// `[n] -> [n, hidden]`
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Quantized(table) => table.embedding(ids)?,
            Embedding::Dense(table) => table.index_select(ids, 0)?,
        })
    }
}

/// Norm weights and biases are small; keep them as dense f32.
pub(crate) fn dense_f32(tensor: &QTensor) -> Result<Tensor> {
    Ok(tensor.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
}

/// Maps every `*.safetensors` file of a Hugging Face checkpoint directory, in name order.
pub(crate) fn map_safetensors_dir(
    dir: &std::path::Path,
) -> Result<candle_core::safetensors::MmapedSafetensors> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| crate::EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(crate::EngineError::bad_model(dir, "no *.safetensors files"));
    }
    // SAFETY: read-only mappings of files we do not modify.
    unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| crate::EngineError::bad_model(dir, format!("safetensors: {e}")))
}
