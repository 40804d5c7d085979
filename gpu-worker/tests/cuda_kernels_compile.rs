//! Every CUDA kernel compiles with NVRTC for sm_80, sm_90 and sm_90a without a warning, and
//! none that the model runs at production sizes spills registers. Needs NVRTC,
//! not a GPU: `deploy/local/check-kernels.sh` installs it and sets `QWEN3_REQUIRE_NVRTC=1`,
//! which turns a missing NVRTC into a failure; without it the tests print
//! `skipped: NVRTC not found` and pass.

use gpu_worker::cuda::compile::{self, Target};
use gpu_worker::cuda::kernels::KERNELS;

/// The architectures the serving fleet runs: A100 (sm_80) and H100/H200 (sm_90), and Hopper
/// with its architecture-specific features (sm_90a), which kernels may come to use.
const ARCHS: [&str; 3] = ["sm_80", "sm_90", "sm_90a"];

/// Whether NVRTC is present; panics when it must be and is not.
fn nvrtc_present() -> bool {
    if compile::nvrtc_available() {
        return true;
    }
    if std::env::var_os("QWEN3_REQUIRE_NVRTC").is_some() {
        panic!(
            "QWEN3_REQUIRE_NVRTC is set but {}",
            compile::CompileError::NvrtcMissing
        );
    }
    eprintln!("skipped: NVRTC not found");
    false
}

#[test]
fn every_kernel_compiles_to_cubin_without_warnings() {
    if !nvrtc_present() {
        return;
    }
    let (major, minor) = compile::nvrtc_version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    for arch in ARCHS {
        let target: Target = arch.parse().unwrap();
        let kernels = compile::compile_all_kernels(target, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kernels.len(), KERNELS.len());
        for kernel in &kernels {
            let name = kernel.source.name;
            assert!(
                kernel.log.trim().is_empty(),
                "kernels/{name}.cu for {arch} is not clean:\n{}",
                kernel.log
            );
            // An ELF image, as the driver loads it.
            assert_eq!(
                &kernel.image[..4],
                b"\x7fELF",
                "kernels/{name}.cu for {arch}"
            );
            eprintln!(
                "ok: kernels/{name}.cu {arch} ({} bytes)",
                kernel.image.len()
            );
        }
    }
}

#[test]
fn every_listed_entry_point_is_defined() {
    if !nvrtc_present() {
        return;
    }
    let kernels = compile::compile_all_kernels(Target::Ptx(80), &[]).unwrap();
    for kernel in &kernels {
        let ptx = String::from_utf8_lossy(&kernel.image);
        for entry in kernel.source.entry_points {
            assert!(
                ptx.contains(&format!(".entry {entry}(")),
                "kernels/{}.cu defines no kernel `{entry}`",
                kernel.source.name
            );
        }
    }
}

/// Prints ptxas' register, shared-memory and spill report for every kernel, and fails if a
/// kernel the model runs at production sizes (anything but the 256-wide attentions) spills.
#[test]
fn resource_usage_report() {
    if !nvrtc_present() {
        return;
    }
    for arch in ARCHS {
        let kernels = compile::compile_all_kernels(arch.parse().unwrap(), &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        for kernel in &kernels {
            eprintln!("== kernels/{}.cu {arch}", kernel.source.name);
            let mut function = String::new();
            for line in kernel.log.lines() {
                if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                    function = rest.split('\'').next().unwrap_or_default().to_string();
                }
                let line = line.trim_start_matches("ptxas info    : ");
                if line.contains("spill") || line.starts_with("Used") {
                    eprintln!("  {function}: {line}");
                }
                let wide_attention =
                    matches!(function.as_str(), "attention_d256" | "attention_rope_d256");
                if line.contains("bytes spill") && !wide_attention {
                    assert!(
                        line.contains(" 0 bytes spill stores, 0 bytes spill loads"),
                        "{function} spills on {arch}: {line}"
                    );
                }
            }
        }
    }
}
