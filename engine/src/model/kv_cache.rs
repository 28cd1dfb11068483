//! Per-sequence key/value cache: one growable buffer per layer, laid out
//! `[kv_heads, capacity, head_dim]` so a head's keys are contiguous rows.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

const INITIAL_CAPACITY: usize = 64;

pub struct SequenceKv {
    /// Per layer `(keys, values)`, allocated on first use.
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl SequenceKv {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Tokens already in the cache; the next token sits at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `keys`/`values` of shape `[kv_heads, n_new, head_dim]` to `layer` and returns
    /// views of the whole cache for that layer, `[kv_heads, len + n_new, head_dim]`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let start = self.len;
        let total = start + keys.dim(1)?;
        let slot = &mut self.layers[layer];
        let (cached_keys, cached_values) = match slot.take() {
            Some((k, v)) if k.dim(1)? >= total => (k, v),
            previous => {
                let (heads, _, head_dim) = keys.dims3()?;
                let old_capacity = previous.as_ref().map_or(Ok(0), |(k, _)| k.dim(1))?;
                let capacity = total.max(old_capacity * 2).max(INITIAL_CAPACITY);
                let k = Tensor::zeros((heads, capacity, head_dim), DType::F32, &Device::Cpu)?;
                let v = Tensor::zeros((heads, capacity, head_dim), DType::F32, &Device::Cpu)?;
                if let Some((old_k, old_v)) = previous
                    && start > 0
                {
                    k.slice_set(&old_k.narrow(1, 0, start)?.contiguous()?, 1, 0)?;
                    v.slice_set(&old_v.narrow(1, 0, start)?.contiguous()?, 1, 0)?;
                }
                (k, v)
            }
        };
        cached_keys.slice_set(keys, 1, start)?;
        cached_values.slice_set(values, 1, start)?;
        let views = (
            cached_keys.narrow(1, 0, total)?,
            cached_values.narrow(1, 0, total)?,
        );
        *slot = Some((cached_keys, cached_values));
        Ok(views)
    }

    /// Called once per forward pass, after every layer has appended `n_new` tokens.
    pub(crate) fn advance(&mut self, n_new: usize) {
        self.len += n_new;
    }
}
