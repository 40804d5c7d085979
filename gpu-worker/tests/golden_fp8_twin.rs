//! The FP8 path's accuracy, stated on its CPU twin (`cpu::fp8_twin`: E4M3 weights per output
//! channel, E4M3 activations per token, f32 accumulation) against transformers' float32
//! vectors in the qwen3-tiny fixture and against the bf16 pass. The bounds are what the twin
//! measures with a margin: they fail if the quantization is wrong (a scale twice too large,
//! saturating each row's larger values, gives cosine 0.21), and the twin must be visibly
//! less exact than bf16 (so it does round).

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::cpu::fp8_twin::Fp8Twin;
use gpu_worker::ops::{BatchLayout, Ops};

/// The embedding of every golden case on `backend`, each case alone.
fn embed_cases<B: Ops>(backend: &B) -> Vec<Vec<f32>> {
    let model = gpu_worker::model::load(&fixture::tiny_dir(), backend).expect("fixture loads");
    let hidden = model.config().hidden_size;
    fixture::case_ids(&fixture::golden())
        .iter()
        .map(|ids| {
            let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
            let mut vectors = model.embed(backend, ids, &layout, &[hidden]).unwrap();
            vectors.remove(0)
        })
        .collect()
}

#[test]
fn fp8_vectors_stay_close_to_transformers_and_to_the_bf16_pass() {
    let golden = fixture::golden();
    let cases = golden["cases"].as_array().unwrap();
    let fp8 = embed_cases(&Fp8Twin);
    let bf16 = embed_cases(&CpuBackend::bf16());
    let (mut worst_golden, mut worst_bf16) = (1.0f32, 1.0f32);
    for ((case, fp8), bf16) in cases.iter().zip(&fp8).zip(&bf16) {
        let want = fixture::floats(&case["embedding"]);
        let (to_golden, to_bf16) = (fixture::cosine(fp8, &want), fixture::cosine(fp8, bf16));
        println!(
            "{}: cosine to transformers f32 {to_golden:.6}, to the bf16 pass {to_bf16:.6}, \
             bf16 to transformers {:.6}",
            case["id"],
            fixture::cosine(bf16, &want)
        );
        worst_golden = worst_golden.min(to_golden);
        worst_bf16 = worst_bf16.min(to_bf16);
    }
    println!("worst: to transformers {worst_golden:.6}, to bf16 {worst_bf16:.6}");
    // Measured on qwen3-tiny: 0.99915 and 0.99914 (the "emoji" case).
    assert!(worst_golden >= 0.998, "to transformers {worst_golden:.6}");
    assert!(worst_bf16 >= 0.998, "to the bf16 pass {worst_bf16:.6}");
    // And the rounding happens: with f32 (or bf16) products it would be >= 0.99999.
    assert!(
        worst_golden < 0.9999,
        "no FP8 rounding seen: {worst_golden:.6}"
    );
}
