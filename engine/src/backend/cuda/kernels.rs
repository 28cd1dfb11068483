//! The CUDA C source of our kernels and its compilation by NVRTC, for the GPU found at
//! start (or, in tests, for any architecture: no GPU is needed to compile).

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use super::CudaError;

/// `kernels/llama.cu`: every kernel the CUDA backend launches.
pub const SOURCE: &str = include_str!("kernels/llama.cu");

/// The kernels `SOURCE` defines, as the backend looks them up.
pub const KERNEL_NAMES: &[&str] = &[
    "embedding_gather",
    "rms_norm",
    "add_rms_norm",
    "add_in_place",
    "silu_mul",
    "rope",
    "kv_cache_write",
    "paged_attention",
    "argmax_f32",
    "sample_rows",
];

/// Whether the NVRTC library can be loaded (it is looked up by name on the library path).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `SOURCE` to PTX for `arch` (e.g. "sm_90").
pub fn compile(arch: &'static str) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::Unavailable(
            "the NVRTC library (libnvrtc.so) is not on the library path".into(),
        ));
    }
    let options = CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into()],
        ..CompileOptions::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|error| CudaError::Compile {
        arch: arch.to_string(),
        log: match error {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })
}

/// The `sm_XY` name NVRTC takes for a compute capability.
pub fn arch_name(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (7, 0) => "sm_70",
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        _ => return None,
    })
}
