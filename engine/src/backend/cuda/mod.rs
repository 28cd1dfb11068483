//! The CUDA backend: a device context and stream, our kernels compiled by NVRTC when it
//! opens, and cuBLAS for the matrix products. Everything is loaded at run time (cudarc's
//! `dynamic-loading`), so the engine builds and runs on machines without CUDA; `probe`
//! says why a GPU cannot be used instead of failing later.
//!
//! The kernels, GEMMs and the Llama forward pass (`llama.rs`) were checked on an H100
//! (`engine/tests/cuda_kernels.rs`, `scripts/gpu_llama_check.py`); `runner.rs` makes the
//! forward pass the scheduler's `ModelRunner`, so the server serves from it with
//! `--device cuda`.

mod batch;
mod gemm;
pub mod kernels;
mod llama;
mod ops;
mod runner;
pub mod sampling;

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaStream};

pub use batch::{BatchLayout, Chunk};
pub use cudarc::driver::{CudaSlice, DriverError};
pub use gemm::Gemm;
pub use llama::{CudaLlama, KvBudget};
pub use ops::{AttentionShape, BLOCK_SIZE, Kernels};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no usable CUDA GPU: {0}")]
    Unavailable(String),
    #[error("this model cannot run on CUDA: {0}")]
    Unsupported(String),
    #[error("compiling the CUDA kernels for {arch} failed:\n{log}")]
    Compile { arch: String, log: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    #[error("invalid kernel arguments: {0}")]
    BadShape(String),
    #[error(transparent)]
    Model(#[from] crate::EngineError),
}

impl From<CudaError> for crate::EngineError {
    fn from(error: CudaError) -> Self {
        match error {
            CudaError::Model(inner) => inner,
            other => crate::EngineError::Gpu(other.to_string()),
        }
    }
}

/// What `probe` found: a GPU the backend can open.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

/// Checks that the driver, NVRTC and cuBLAS libraries load, that GPU `ordinal` exists, and
/// that the kernels target its architecture.
pub fn probe(ordinal: usize) -> Result<GpuInfo, CudaError> {
    // SAFETY: each check only tries to dlopen the library by its known names.
    let (driver, blas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(CudaError::Unavailable(
            "the NVIDIA driver's CUDA library (libcuda.so) is not installed".into(),
        ));
    }
    if !kernels::nvrtc_available() {
        return Err(CudaError::Unavailable(
            "the NVRTC library (libnvrtc.so) is not on the library path".into(),
        ));
    }
    if !blas {
        return Err(CudaError::Unavailable(
            "the cuBLAS library (libcublas.so) is not on the library path".into(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| CudaError::Unavailable(format!("the CUDA driver failed to start: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(CudaError::Unavailable(format!(
            "GPU {ordinal} requested, but CUDA sees {count}"
        )));
    }
    let ctx = CudaContext::new(ordinal)?;
    let info = GpuInfo {
        ordinal,
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_memory: ctx.total_mem()?,
    };
    info.arch()?;
    Ok(info)
}

impl GpuInfo {
    /// The `sm_XY` the kernels are compiled for on this GPU.
    fn arch(&self) -> Result<&'static str, CudaError> {
        let (major, minor) = self.compute_capability;
        kernels::arch_name(major, minor).ok_or_else(|| {
            CudaError::Unavailable(format!(
                "{} has compute capability {major}.{minor}, which the kernels do not target",
                self.name
            ))
        })
    }
}

/// An open GPU: its context, the stream everything runs on, kernels and cuBLAS.
pub struct CudaBackend {
    pub info: GpuInfo,
    pub stream: Arc<CudaStream>,
    pub kernels: Kernels,
    pub gemm: Gemm,
}

impl CudaBackend {
    /// Opens GPU `ordinal` and compiles the kernels for its architecture.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let info = probe(ordinal)?;
        let arch = info.arch()?;
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(kernels::compile(arch)?)?;
        let kernels = Kernels::load(&module, stream.clone())?;
        let gemm = Gemm::new(CudaBlas::new(stream.clone())?, stream.clone());
        Ok(Self {
            info,
            stream,
            kernels,
            gemm,
        })
    }
}
