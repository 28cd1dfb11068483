//! Weight access shared by the GGUF and safetensors loaders: quantized or dense matrices
//! behind one `Linear`, and embeddings that dequantize only the rows they look up.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::backend::cpu::qmatmul::{self, WeightFormat, Weights};
use crate::error::{EngineError, Result};

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
        self.add_bias(self.weight.forward(xs)?)
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        })
    }

    /// Whether our own kernels multiply by this weight: each token's result is then the
    /// same bits whatever else shares its batch.
    pub(crate) fn in_own_kernels(&self) -> bool {
        self.kernel_weights().is_some()
    }

    /// The weight matrix, where it is in a format our CPU kernels read in place.
    fn kernel_weights(&self) -> Option<Weights<'_>> {
        let QMatMul::QTensor(tensor) = &self.weight else {
            return None;
        };
        let format = match tensor.dtype() {
            GgmlDType::Q4_1 => WeightFormat::Q4_1,
            GgmlDType::Q5_0 => WeightFormat::Q5_0,
            GgmlDType::Q8_0 => WeightFormat::Q8_0,
            _ => return None,
        };
        let (rows, _) = tensor.shape().dims2().ok()?;
        match tensor.data().ok()? {
            Cow::Borrowed(bytes) => Some(Weights {
                format,
                bytes,
                rows,
            }),
            Cow::Owned(_) => None,
        }
    }
}

/// `xs · Wᵀ + b` for several linears of one input `[n, in]`: one pass over all of them, with
/// one quantization of `xs`, where our kernels read every weight; else one by one.
pub(crate) fn forward_shared<const N: usize>(
    linears: [&Linear; N],
    xs: &Tensor,
) -> Result<[Tensor; N]> {
    let Some(weights) = linears
        .iter()
        .map(|l| l.kernel_weights())
        .collect::<Option<Vec<_>>>()
    else {
        return try_map(linears, |l| l.forward(xs));
    };
    let (m, k, lhs) = input_rows(xs)?;
    let mut outputs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.rows]).collect();
    let mut products: Vec<(Weights<'_>, &mut [f32])> = weights
        .iter()
        .copied()
        .zip(outputs.iter_mut().map(Vec::as_mut_slice))
        .collect();
    qmatmul::matmul_shared(m, k, &lhs, &mut products).map_err(EngineError::ForwardFailed)?;
    let mut products = outputs.into_iter().zip(&weights);
    try_map(linears, |linear| {
        // One product per linear: `weights` was collected from `linears`.
        let (ys, w) = products
            .next()
            .ok_or_else(|| EngineError::ForwardFailed("a product short".into()))?;
        linear.add_bias(Tensor::from_vec(ys, (m, w.rows), xs.device())?)
    })
}

/// `[m, k]` as row-major values, for our kernels.
fn input_rows(xs: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let (m, k) = xs.dims2()?;
    Ok((m, k, xs.flatten_all()?.to_vec1::<f32>()?))
}

/// A feed-forward block's gated activation `silu(xs · Wgᵀ) * (xs · Wuᵀ)`: one pass over both
/// matrices where our kernels read them and there are no biases; else candle's ops.
pub(crate) fn forward_swiglu(gate: &Linear, up: &Linear, xs: &Tensor) -> Result<Tensor> {
    let fused = match (gate.kernel_weights(), up.kernel_weights()) {
        (Some(g), Some(u)) if gate.bias.is_none() && up.bias.is_none() => Some((g, u)),
        _ => None,
    };
    let Some((g, u)) = fused else {
        let gated = candle_nn::ops::silu(&gate.forward(xs)?)?;
        return Ok((gated * up.forward(xs)?)?);
    };
    let (m, k, lhs) = input_rows(xs)?;
    let mut out = vec![0f32; m * g.rows];
    qmatmul::matmul_swiglu(m, k, &lhs, g, u, &mut out).map_err(EngineError::ForwardFailed)?;
    Ok(Tensor::from_vec(out, (m, g.rows), xs.device())?)
}

fn try_map<T, U, const N: usize>(
    items: [T; N],
    mut f: impl FnMut(T) -> Result<U>,
) -> Result<[U; N]> {
    let mut out = Vec::with_capacity(N);
    for item in items {
        out.push(f(item)?);
    }
    out.try_into()
        .map_err(|_| EngineError::ForwardFailed("array length".into()))
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
