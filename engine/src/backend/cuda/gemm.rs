//! Matrix products on cuBLAS in the layout the model uses: activations `x` [m, k] row-major
//! times weights `w` [n, k] row-major (as Hugging Face stores them), so `y = x · wᵀ` [m, n].
//! bf16 in and out (or f32 out, for logits) with f32 accumulation on the tensor cores.

use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{CudaBlas, result};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::CudaError;

pub struct Gemm {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

/// What `y` holds: bf16 (hidden states) or f32 (logits).
trait OutputType {
    const CUDA: cudaDataType_t;
}

impl OutputType for bf16 {
    const CUDA: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;
}

impl OutputType for f32 {
    const CUDA: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
}

impl Gemm {
    pub(super) fn new(blas: CudaBlas, stream: Arc<CudaStream>) -> Self {
        Self { blas, stream }
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` in bf16.
    pub fn matmul_bf16(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        self.matmul(x, w, y, m, n, k)
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` with f32 output (the LM head's logits).
    pub fn matmul_f32_out(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaSlice<f32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        self.matmul(x, w, y, m, n, k)
    }

    fn matmul<T: OutputType + cudarc::driver::DeviceRepr>(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaSlice<T>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        if x.len() != m * k || w.len() != n * k || y.len() != m * n {
            return Err(CudaError::BadShape(format!(
                "matmul of [{m}, {k}] by [{n}, {k}]ᵀ into {} (x {}, w {})",
                y.len(),
                x.len(),
                w.len()
            )));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| CudaError::BadShape(format!("matmul dimension {v}")))
        };
        let (m, n, k) = (dim(m)?, dim(n)?, dim(k)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (w_ptr, _w_guard) = w.device_ptr(&self.stream);
        let (x_ptr, _x_guard) = x.device_ptr(&self.stream);
        let (y_ptr, _y_guard) = y.device_ptr_mut(&self.stream);
        // Column-major view: yᵀ [n, m] = w [n, k] · xᵀ [k, m], i.e. op(A) = wᵀ of the
        // column-major [k, n] buffer, and B = the column-major [k, m] buffer of x.
        // SAFETY: sizes are checked above; the pointers stay valid while the guards live,
        // and all work is queued on `self.stream`, which cuBLAS is bound to.
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                n,
                m,
                k,
                (&alpha as *const f32).cast(),
                w_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                k,
                x_ptr as *const _,
                cudaDataType_t::CUDA_R_16BF,
                k,
                (&beta as *const f32).cast(),
                y_ptr as *mut _,
                T::CUDA,
                n,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}
