//! The CPU backend's bf16 mode against transformers' float32 outputs in the qwen3-tiny
//! fixture: cosine >= 0.9999 for every case, on the AMX and avx512_bf16 kernels (where the
//! CPU has them) and on the portable kernel, and the same vectors whatever the batch
//! composition.

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::cpu::linear_bf16::Kernel;
use gpu_worker::model::qwen3::Qwen3;
use gpu_worker::ops::BatchLayout;

/// The bf16 backends this machine can run: the portable kernel always, the fast ones where
/// the CPU has them.
fn backends() -> Vec<CpuBackend> {
    for kernel in [Kernel::Avx512Bf16, Kernel::Amx] {
        if !kernel.supported() {
            println!("skipped: this CPU cannot run {}", kernel.name());
        }
    }
    Kernel::all_supported()
        .into_iter()
        .map(CpuBackend::with_kernel)
        .collect()
}

fn load(backend: &CpuBackend) -> Qwen3<CpuBackend> {
    gpu_worker::model::load(&fixture::tiny_dir(), backend).expect("fixture loads")
}

#[test]
fn every_case_within_cosine_0_9999_of_transformers() {
    let golden = fixture::golden();
    for backend in backends() {
        let model = load(&backend);
        let hidden = model.config().hidden_size;
        for case in golden["cases"].as_array().unwrap() {
            let ids = fixture::ids(&case["input_ids"]);
            let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
            let got = model.embed(&backend, &ids, &layout, &[hidden]).unwrap();
            let want = fixture::floats(&case["embedding"]);
            let cos = fixture::cosine(&got[0], &want);
            assert!(
                cos >= 0.9999,
                "{backend:?}, case {}: cosine {cos:.6}",
                case["id"]
            );
        }
    }
}

#[test]
fn batch_composition_does_not_change_vectors() {
    let cases = fixture::case_ids(&fixture::golden());
    for backend in backends() {
        let model = load(&backend);
        let hidden = model.config().hidden_size;
        let alone: Vec<Vec<f32>> = cases
            .iter()
            .map(|ids| {
                let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
                model
                    .embed(&backend, ids, &layout, &[hidden])
                    .unwrap()
                    .remove(0)
            })
            .collect();
        for group in fixture::random_groups(cases.len(), 4, 6, 11) {
            let (packed, layout) = fixture::pack(&cases, &group);
            let out = model
                .embed(&backend, &packed, &layout, &vec![hidden; group.len()])
                .unwrap();
            for (&i, got) in group.iter().zip(&out) {
                let diff = fixture::max_abs_diff(got, &alone[i]);
                assert!(
                    diff <= 1e-6,
                    "{backend:?}, case {i} in {group:?}: diff {diff}"
                );
            }
        }
    }
}

#[test]
fn every_kernel_agrees_with_the_portable_one() {
    let cases = fixture::case_ids(&fixture::golden());
    let backends = backends();
    let [portable, fast @ ..] = &backends[..] else {
        unreachable!("the portable kernel always runs")
    };
    if fast.is_empty() {
        return; // printed "skipped" in backends()
    }
    let slow_model = load(portable);
    let hidden = slow_model.config().hidden_size;
    let all: Vec<usize> = (0..cases.len()).collect();
    let (packed, layout) = fixture::pack(&cases, &all);
    let dims = vec![hidden; all.len()];
    let a = slow_model.embed(portable, &packed, &layout, &dims).unwrap();
    for backend in fast {
        let b = load(backend)
            .embed(backend, &packed, &layout, &dims)
            .unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            // Same bf16 operands, f32 sums in a different order.
            let diff = fixture::max_abs_diff(x, y);
            assert!(
                diff < 1e-4,
                "{backend:?}: case {i}: kernels differ by {diff}"
            );
        }
    }
}
