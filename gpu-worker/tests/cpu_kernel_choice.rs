//! The bf16 CPU backend's matrix path as configured (`cpu_kernel`): `auto` takes the fastest
//! this CPU runs; a named path runs where the CPU has it and is refused at start, naming
//! it, where not; f32 ignores the choice.

mod fixture;

use common::subjects::Task;
use gpu_worker::cpu::pack_bf16::Kernel;
use gpu_worker::engine::{self, BackendChoice, CpuKernel, Dtype, EngineError, EngineOptions};

fn options(dtype: Dtype, cpu_kernel: CpuKernel) -> EngineOptions {
    EngineOptions {
        backend: BackendChoice::Cpu,
        dtype,
        cpu_kernel,
        ..EngineOptions::cpu()
    }
}

/// What the loaded model says it runs on, or the start-up error.
fn device(dtype: Dtype, choice: CpuKernel) -> Result<String, EngineError> {
    let model = engine::load(&fixture::tiny_dir(), &options(dtype, choice), Task::Embed)?;
    Ok(model.info().device.description)
}

#[test]
fn a_named_path_runs_where_the_cpu_has_it_and_is_refused_where_not() {
    let choices = [
        (CpuKernel::Amx, Kernel::Amx),
        (CpuKernel::Avx512Bf16, Kernel::Avx512Bf16),
        (CpuKernel::Portable, Kernel::Portable),
    ];
    for (choice, kernel) in choices {
        match device(Dtype::Bf16, choice) {
            Ok(description) => {
                assert!(kernel.supported(), "{choice:?} loaded on a CPU without it");
                assert!(
                    description.contains(kernel.name()),
                    "{choice:?}: the device says {description:?}"
                );
            }
            Err(EngineError::Config(message)) => {
                assert!(!kernel.supported(), "{choice:?} refused: {message}");
                assert!(message.contains(kernel.name()), "{message}");
                println!("refused as expected on this CPU: {message}");
            }
            Err(other) => panic!("{choice:?}: unexpected error {other}"),
        }
    }
}

#[test]
fn auto_takes_the_fastest_path_this_cpu_runs() {
    let description = device(Dtype::Bf16, CpuKernel::Auto).expect("auto always loads");
    let fastest = Kernel::detect();
    assert_eq!(fastest, *Kernel::all_supported().last().unwrap());
    assert!(description.contains(fastest.name()), "{description}");
}

#[test]
fn f32_ignores_the_choice() {
    for choice in [CpuKernel::Amx, CpuKernel::Avx512Bf16, CpuKernel::Portable] {
        let description = device(Dtype::F32, choice).expect("f32 loads whatever the choice");
        assert!(description.contains("f32 products"), "{description}");
    }
}
