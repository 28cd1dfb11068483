//! Every CUDA kernel compiles with NVRTC for Ampere (sm_80) and Hopper (sm_90), on any
//! machine: no GPU is needed. `make rust-tests` puts PyPI's libnvrtc on the library path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use engine::backend::cuda::kernels::{self, KERNEL_NAMES};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    assert!(
        kernels::nvrtc_available(),
        "libnvrtc.so is not on LD_LIBRARY_PATH; `make rust-tests` installs it from PyPI (nvidia-cuda-nvrtc-cu12)"
    );
    for arch in ["sm_80", "sm_90"] {
        let ptx = kernels::compile(arch)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        assert!(ptx.contains(&format!(".target {arch}")), "{arch}");
        for name in KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{name} missing from the {arch} PTX"
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_the_compiler_log() {
    let error =
        cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void k() { undefined_thing(); }")
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
    assert!(error.contains("undefined_thing"), "{error}");
}

#[test]
fn known_gpus_map_to_their_architectures() {
    assert_eq!(kernels::arch_name(9, 0), Some("sm_90"));
    assert_eq!(kernels::arch_name(8, 0), Some("sm_80"));
    assert_eq!(kernels::arch_name(8, 6), Some("sm_86"));
    assert_eq!(kernels::arch_name(6, 1), None);
}
