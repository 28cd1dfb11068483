//! Quantized weights read in place from a memory-mapped GGUF file: a `QuantizedType`
//! whose blocks are a view into the mapping, so loading copies nothing and the page cache
//! holds the only copy of the weights.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, Shape};
use half::{bf16, f16};
use memmap2::Mmap;

use crate::backend::cpu::qmatmul::{self, WeightFormat};

/// `len` blocks of `T` starting `offset` bytes into `mmap`.
struct MappedBlocks<T> {
    mmap: Arc<Mmap>,
    offset: usize,
    len: usize,
    _blocks: PhantomData<T>,
}

impl<T: GgmlType> MappedBlocks<T> {
    fn blocks(&self) -> &[T] {
        // SAFETY: `new_qtensor` checked that the range lies inside the mapping and that
        // it is aligned for `T`; GGML block types are plain `repr(C)` data, valid for any
        // bytes, and the read-only mapping lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(self.mmap.as_ptr().add(self.offset).cast::<T>(), self.len)
        }
    }
}

impl<T: GgmlType + 'static> QuantizedType for MappedBlocks<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f32],
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        let format = match T::DTYPE {
            GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
            GgmlDType::Q5_0 => Some(WeightFormat::Q5_0),
            GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
            _ => None,
        };
        match format {
            Some(format) => {
                // SAFETY: the same in-bounds range `blocks()` views, as bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(self.as_ptr(), self.storage_size_in_bytes())
                };
                qmatmul::matmul(format, mkn, lhs, bytes, dst).map_err(candle_core::Error::Msg)
            }
            None => k_quants::matmul(mkn, lhs, self.blocks(), dst),
        }
    }

    fn matmul_t_f16(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f16],
        dst: &mut [f16],
    ) -> candle_core::Result<()> {
        k_quants::matmul_f16(mkn, lhs, self.blocks(), dst)
    }

    fn embedding(
        &self,
        ids: &[u32],
        rows: usize,
        hidden: usize,
    ) -> candle_core::Result<CpuStorage> {
        if !hidden.is_multiple_of(T::BLCK_SIZE) || self.len != rows * (hidden / T::BLCK_SIZE) {
            candle_core::bail!(
                "embedding table of {} blocks does not hold {rows}x{hidden}",
                self.len
            )
        }
        let row_blocks = hidden / T::BLCK_SIZE;
        let blocks = self.blocks();
        let mut out = vec![0f32; ids.len() * hidden];
        for (out_row, &id) in ids.iter().enumerate() {
            let row = id as usize;
            if row >= rows {
                candle_core::bail!("token id {row} is out of range for {rows} rows")
            }
            T::to_float(
                &blocks[row * row_blocks..(row + 1) * row_blocks],
                &mut out[out_row * hidden..(out_row + 1) * hidden],
            );
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> candle_core::Result<CpuStorage> {
        let mut out = vec![0f32; elem_count];
        T::to_float(self.blocks(), &mut out);
        Ok(CpuStorage::F32(out))
    }

    fn storage_size_in_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    fn as_ptr(&self) -> *const u8 {
        self.blocks().as_ptr().cast()
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    // Quantizing *into* a tensor rewrites its blocks; candle only does that to tensors it
    // created with `QTensor::quantize`, never to weights loaded from a file, and a
    // read-only mapping cannot be written. Leave the weights untouched.
    fn from_float(&mut self, _xs: &[f32]) {
        tracing::error!("ignored an attempt to overwrite memory-mapped weights");
    }

    fn from_float_imatrix(&mut self, _xs: &[f32], _imatrix: &[f32], _n_per_row: usize) {
        tracing::error!("ignored an attempt to overwrite memory-mapped weights");
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

/// A `QTensor` over `bytes` bytes at `offset` in `mmap`, or `None` if the range is out of
/// bounds or misaligned (the caller then falls back to copying).
pub(crate) fn new_qtensor(
    mmap: &Arc<Mmap>,
    offset: usize,
    dtype: GgmlDType,
    shape: Shape,
) -> Option<QTensor> {
    fn storage<T: GgmlType + 'static>(
        mmap: &Arc<Mmap>,
        offset: usize,
        elems: usize,
    ) -> Option<QStorage> {
        if !elems.is_multiple_of(T::BLCK_SIZE) {
            return None;
        }
        let len = elems / T::BLCK_SIZE;
        let end = offset.checked_add(len.checked_mul(std::mem::size_of::<T>())?)?;
        let aligned = (mmap.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        if end > mmap.len() || !aligned {
            return None;
        }
        Some(QStorage::Cpu(Box::new(MappedBlocks::<T> {
            mmap: mmap.clone(),
            offset,
            len,
            _blocks: PhantomData,
        })))
    }
    let elems = shape.elem_count();
    let storage = match dtype {
        GgmlDType::F32 => storage::<f32>(mmap, offset, elems),
        GgmlDType::F16 => storage::<f16>(mmap, offset, elems),
        GgmlDType::BF16 => storage::<bf16>(mmap, offset, elems),
        GgmlDType::Q4_0 => storage::<BlockQ4_0>(mmap, offset, elems),
        GgmlDType::Q4_1 => storage::<BlockQ4_1>(mmap, offset, elems),
        GgmlDType::Q5_0 => storage::<BlockQ5_0>(mmap, offset, elems),
        GgmlDType::Q5_1 => storage::<BlockQ5_1>(mmap, offset, elems),
        GgmlDType::Q8_0 => storage::<BlockQ8_0>(mmap, offset, elems),
        GgmlDType::Q8_1 => storage::<BlockQ8_1>(mmap, offset, elems),
        GgmlDType::Q2K => storage::<BlockQ2K>(mmap, offset, elems),
        GgmlDType::Q3K => storage::<BlockQ3K>(mmap, offset, elems),
        GgmlDType::Q4K => storage::<BlockQ4K>(mmap, offset, elems),
        GgmlDType::Q5K => storage::<BlockQ5K>(mmap, offset, elems),
        GgmlDType::Q6K => storage::<BlockQ6K>(mmap, offset, elems),
        GgmlDType::Q8K => storage::<BlockQ8K>(mmap, offset, elems),
    }?;
    QTensor::new(storage, shape).ok()
}
