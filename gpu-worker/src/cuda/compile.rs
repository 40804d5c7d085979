//! Run-time compilation of `kernels/*.cu` (the files of the registry, [`KERNELS`]) with
//! NVRTC, usable without a GPU (the kernel check in CI and `deploy/local/check-kernels.sh`
//! compiles for `sm_80`, `sm_90` and `sm_90a` this way).
//!
//! The sources are built into the binary. They include only `common.cuh`, which is handed to
//! NVRTC in memory: no CUDA header and no include path is needed at run time, only
//! `libnvrtc.so.13` (and its `libnvrtc-builtins`) on `LD_LIBRARY_PATH`.
//!
//! A device is compiled for as CUBIN for its exact architecture (`sm_XY`), so the driver
//! never has to accept a PTX version; PTX (`compute_XY`) is the fallback when this NVRTC does
//! not know the device's architecture.

use std::ffi::{CStr, CString, c_char, c_int};
use std::fmt;
use std::str::FromStr;

use cudarc::nvrtc::sys;

use super::kernels::KERNELS;

/// One kernel file and the entry points the backend loads from it (listed once, in the
/// registry: [`KERNELS`]).
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File stem in `kernels/` (the op name).
    pub name: &'static str,
    /// CUDA C++ source.
    pub source: &'static str,
    /// `extern "C"` kernels the file defines.
    pub entry_points: &'static [&'static str],
}

/// The header every kernel includes, by the name the sources use.
const COMMON_HEADER: (&str, &str) = ("common.cuh", include_str!("../../kernels/common.cuh"));

/// What NVRTC produces for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for exactly this architecture (`sm_90` is `Cubin(90)`).
    Cubin(u32),
    /// Machine code for exactly this architecture with its architecture-specific features
    /// (`sm_90a` is `ArchSpecificCubin(90)`: Hopper's `wgmma`, `setmaxnreg`), which loads on
    /// that architecture only. No kernel uses such features yet, so [`Target::for_device`]
    /// never picks it; the compile check builds it so that the kernels stay ready for it.
    ArchSpecificCubin(u32),
    /// PTX for this virtual architecture (`compute_90` is `Ptx(90)`), compiled by the driver
    /// at load.
    Ptx(u32),
}

impl Target {
    /// The target for a device of compute capability `major.minor`, given the architectures
    /// this NVRTC supports: CUBIN for the exact architecture when NVRTC knows it, else PTX for
    /// the newest architecture NVRTC knows below it.
    pub fn for_device(major: u32, minor: u32, supported: &[u32]) -> Result<Self, CompileError> {
        let arch = major * 10 + minor;
        if supported.contains(&arch) {
            return Ok(Target::Cubin(arch));
        }
        supported
            .iter()
            .copied()
            .filter(|&a| a < arch)
            .max()
            .map(Target::Ptx)
            .ok_or_else(|| {
                CompileError::Unsupported(format!(
                    "NVRTC supports {supported:?}, nothing at or below compute capability {major}.{minor}"
                ))
            })
    }

    /// The `--gpu-architecture` value.
    fn arch_option(self) -> String {
        format!("--gpu-architecture={self}")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cubin(arch) => write!(f, "sm_{arch}"),
            Target::ArchSpecificCubin(arch) => write!(f, "sm_{arch}a"),
            Target::Ptx(arch) => write!(f, "compute_{arch}"),
        }
    }
}

impl FromStr for Target {
    type Err = CompileError;

    /// Parses `sm_XY` (CUBIN), `sm_XYa` (arch-specific CUBIN) or `compute_XY` (PTX).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            || CompileError::Unsupported(format!("`{s}` is not sm_XY, sm_XYa or compute_XY"));
        let parse = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            digits.parse::<u32>().map_err(|_| invalid())
        };
        if let Some(arch) = s.strip_prefix("sm_") {
            match arch.strip_suffix('a') {
                Some(digits) => Ok(Target::ArchSpecificCubin(parse(digits)?)),
                None => Ok(Target::Cubin(parse(arch)?)),
            }
        } else if let Some(digits) = s.strip_prefix("compute_") {
            Ok(Target::Ptx(parse(digits)?))
        } else {
            Err(invalid())
        }
    }
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// The source it came from.
    pub source: KernelSource,
    /// What it was compiled for.
    pub target: Target,
    /// CUBIN, or NUL-terminated PTX text.
    pub image: Vec<u8>,
    /// NVRTC's log: warnings (empty for a clean compile), and resource usage when asked for
    /// with `--ptxas-options=-v`.
    pub log: String,
}

/// Why kernels could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// `libnvrtc` could not be loaded.
    #[error(
        "NVRTC not found: put the directory holding libnvrtc.so.13 (pip package \
         nvidia-cuda-nvrtc, folder nvidia/cu13/lib) on LD_LIBRARY_PATH"
    )]
    NvrtcMissing,
    /// The source did not compile; the log says why.
    #[error("kernels/{kernel}.cu does not compile for {target}:\n{log}")]
    Compile {
        /// File stem.
        kernel: &'static str,
        /// The target.
        target: Target,
        /// NVRTC's log.
        log: String,
    },
    /// An NVRTC call failed outside compilation.
    #[error("NVRTC call {call} failed: {status}")]
    Nvrtc {
        /// The function.
        call: &'static str,
        /// NVRTC's error string.
        status: String,
    },
    /// The architecture cannot be compiled for.
    #[error("unsupported target: {0}")]
    Unsupported(String),
}

/// Whether `libnvrtc` can be loaded (calling NVRTC without it would panic inside cudarc).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library; nothing is called through it.
    unsafe { sys::is_culib_present() }
}

/// Converts an NVRTC status into a `Result`.
fn check(call: &'static str, status: sys::nvrtcResult) -> Result<(), CompileError> {
    if status == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any status.
    let text = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(status)) };
    Err(CompileError::Nvrtc {
        call,
        status: text.to_string_lossy().into_owned(),
    })
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CompileError> {
    if !nvrtc_available() {
        return Err(CompileError::NvrtcMissing);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for one write each.
    check("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major, minor))
}

/// The architectures this NVRTC compiles for (`[75, 80, 86, ..]`).
pub fn supported_archs() -> Result<Vec<u32>, CompileError> {
    if !nvrtc_available() {
        return Err(CompileError::NvrtcMissing);
    }
    let mut count: c_int = 0;
    // SAFETY: `count` is valid for one write.
    check("nvrtcGetNumSupportedArchs", unsafe {
        sys::nvrtcGetNumSupportedArchs(&mut count)
    })?;
    let mut archs = vec![0 as c_int; count.max(0) as usize];
    // SAFETY: `archs` holds the `count` entries NVRTC writes.
    check("nvrtcGetSupportedArchs", unsafe {
        sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
    })?;
    Ok(archs.into_iter().map(|a| a as u32).collect())
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here.
        // A failure to free cannot be acted on in drop.
        let _ = unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

impl Program {
    /// The compile log, without its trailing NUL.
    fn log(&self) -> Result<String, CompileError> {
        let mut size = 0usize;
        // SAFETY: the program is live; `size` is valid for one write.
        check("nvrtcGetProgramLogSize", unsafe {
            sys::nvrtcGetProgramLogSize(self.0, &mut size)
        })?;
        let mut log = vec![0u8; size.max(1)];
        // SAFETY: `log` holds the `size` bytes NVRTC writes (NUL included).
        check("nvrtcGetProgramLog", unsafe {
            sys::nvrtcGetProgramLog(self.0, log.as_mut_ptr().cast::<c_char>())
        })?;
        let text = CStr::from_bytes_until_nul(&log).map_or_else(
            |_| String::from_utf8_lossy(&log).into_owned(),
            |c| c.to_string_lossy().into_owned(),
        );
        Ok(text)
    }

    /// The compiled image: CUBIN bytes or NUL-terminated PTX.
    fn image(&self, target: Target) -> Result<Vec<u8>, CompileError> {
        let mut size = 0usize;
        let mut image;
        match target {
            Target::Cubin(_) | Target::ArchSpecificCubin(_) => {
                // SAFETY: the program compiled for a real architecture; `size` is valid.
                check("nvrtcGetCUBINSize", unsafe {
                    sys::nvrtcGetCUBINSize(self.0, &mut size)
                })?;
                image = vec![0u8; size];
                // SAFETY: `image` holds the `size` bytes NVRTC writes.
                check("nvrtcGetCUBIN", unsafe {
                    sys::nvrtcGetCUBIN(self.0, image.as_mut_ptr().cast::<c_char>())
                })?;
            }
            Target::Ptx(_) => {
                // SAFETY: the program compiled; `size` is valid for one write.
                check("nvrtcGetPTXSize", unsafe {
                    sys::nvrtcGetPTXSize(self.0, &mut size)
                })?;
                image = vec![0u8; size];
                // SAFETY: `image` holds the `size` bytes (NUL included) NVRTC writes.
                check("nvrtcGetPTX", unsafe {
                    sys::nvrtcGetPTX(self.0, image.as_mut_ptr().cast::<c_char>())
                })?;
            }
        }
        Ok(image)
    }
}

/// Compiles one kernel file for `target`, with `extra_options` appended (such as
/// `--ptxas-options=-v` for a resource-usage report in the log).
pub fn compile_kernel(
    kernel: KernelSource,
    target: Target,
    extra_options: &[&str],
) -> Result<CompiledKernel, CompileError> {
    if !nvrtc_available() {
        return Err(CompileError::NvrtcMissing);
    }
    let c_string = |s: &str| CString::new(s).expect("kernel sources hold no NUL; this is a bug");
    let source = c_string(kernel.source);
    let file_name = c_string(&format!("{}.cu", kernel.name));
    let header = c_string(COMMON_HEADER.1);
    let header_name = c_string(COMMON_HEADER.0);
    let headers = [header.as_ptr()];
    let header_names = [header_name.as_ptr()];
    let mut raw = std::ptr::null_mut();
    // SAFETY: every pointer is a NUL-terminated string (or an array of one such pointer) that
    // outlives the program: the CStrings are declared before `program` and dropped after it.
    check("nvrtcCreateProgram", unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            source.as_ptr(),
            file_name.as_ptr(),
            1,
            headers.as_ptr(),
            header_names.as_ptr(),
        )
    })?;
    let program = Program(raw);

    let options: Vec<CString> = [target.arch_option(), "--std=c++17".to_string()]
        .into_iter()
        .chain(extra_options.iter().map(|o| o.to_string()))
        .map(|o| c_string(&o))
        .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: the program is live and `option_ptrs` points at `options.len()` live strings.
    let status = unsafe {
        sys::nvrtcCompileProgram(program.0, option_ptrs.len() as c_int, option_ptrs.as_ptr())
    };
    let log = program.log()?;
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CompileError::Compile {
            kernel: kernel.name,
            target,
            log,
        });
    }
    Ok(CompiledKernel {
        source: kernel,
        target,
        image: program.image(target)?,
        log,
    })
}

/// Compiles every kernel file of the registry for `target` (one thread per file), in
/// [`KERNELS`] order. Needs NVRTC only, no GPU.
pub fn compile_all_kernels(
    target: Target,
    extra_options: &[&str],
) -> Result<Vec<CompiledKernel>, CompileError> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> = KERNELS
            .iter()
            .map(|&kernel| scope.spawn(move || compile_kernel(kernel, target, extra_options)))
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join()
                    .expect("NVRTC compile thread panicked; this is a bug")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        assert_eq!("sm_90".parse::<Target>().unwrap(), Target::Cubin(90));
        assert_eq!(
            "sm_90a".parse::<Target>().unwrap(),
            Target::ArchSpecificCubin(90)
        );
        assert_eq!("compute_80".parse::<Target>().unwrap(), Target::Ptx(80));
        for bad in [
            "sm90",
            "sm_x",
            "sm_a",
            "sm_90aa",
            "sm_+90",
            "compute_90a",
            "sm_",
            "",
        ] {
            assert!(bad.parse::<Target>().is_err(), "`{bad}` parsed");
        }
        assert_eq!(Target::Cubin(86).to_string(), "sm_86");
        assert_eq!(Target::ArchSpecificCubin(90).to_string(), "sm_90a");
        assert_eq!(Target::Ptx(80).to_string(), "compute_80");
        for target in [
            Target::Cubin(80),
            Target::ArchSpecificCubin(90),
            Target::Ptx(90),
        ] {
            assert_eq!(target.to_string().parse::<Target>().unwrap(), target);
        }
        assert_eq!(
            Target::ArchSpecificCubin(90).arch_option(),
            "--gpu-architecture=sm_90a"
        );
    }

    #[test]
    fn device_targets_prefer_cubin_then_older_ptx() {
        let supported = [75, 80, 86, 89, 90];
        assert_eq!(
            Target::for_device(9, 0, &supported).unwrap(),
            Target::Cubin(90)
        );
        assert_eq!(
            Target::for_device(12, 0, &supported).unwrap(),
            Target::Ptx(90)
        );
        assert_eq!(
            Target::for_device(8, 7, &supported).unwrap(),
            Target::Ptx(86)
        );
        assert!(Target::for_device(7, 0, &supported).is_err());
    }

    #[test]
    fn every_kernel_file_is_listed_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".cu").map(str::to_string)
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = KERNELS.iter().map(|k| k.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }
}
