//! `normalize: false` on the CPU backend against transformers' float32 outputs in the
//! qwen3-tiny fixture: the raw pooled vector is the final norm's output at the last token
//! (the trace's `after_final_norm`), and every case's normalized embedding times its
//! `norm_before_normalize`.

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::model::qwen3::Qwen3;
use gpu_worker::ops::BatchLayout;

fn load() -> Qwen3<CpuBackend> {
    gpu_worker::model::load(&fixture::tiny_dir(), &CpuBackend::F32).expect("fixture loads")
}

#[test]
fn an_unnormalized_vector_is_the_final_norm_output_at_the_last_token() {
    let golden = fixture::golden();
    let trace = &golden["trace"];
    let model = load();
    let hidden = model.config().hidden_size;
    let ids = fixture::ids(&trace["input_ids"]);
    let rows = trace["after_final_norm"].as_array().unwrap();
    let want = fixture::floats(rows.last().unwrap());
    let layout = BatchLayout::from_lengths(&[ids.len(), ids.len()]).unwrap();
    let packed = [ids.clone(), ids].concat();
    // The same sequence twice in one pass: whole, and cut to 16 (Matryoshka, no rescaling).
    let got = model
        .embed_each(
            &CpuBackend::F32,
            &packed,
            &layout,
            &[hidden, 16],
            &[false, false],
        )
        .unwrap();
    let diff = fixture::max_abs_diff(&got[0], &want);
    assert!(diff < 2e-5, "whole: max abs diff {diff}");
    let diff = fixture::max_abs_diff(&got[1], &want[..16]);
    assert!(diff < 2e-5, "cut to 16: max abs diff {diff}");
}

#[test]
fn a_mixed_batch_normalizes_only_the_sequences_that_ask() {
    let golden = fixture::golden();
    let model = load();
    let hidden = model.config().hidden_size;
    let cases = &golden["cases"].as_array().unwrap()[..6];
    let ids: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| fixture::ids(&c["input_ids"]))
        .collect();
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let layout = BatchLayout::from_lengths(&lengths).unwrap();
    let normalize: Vec<bool> = (0..cases.len()).map(|i| i % 2 == 0).collect();
    let got = model
        .embed_each(
            &CpuBackend::F32,
            &ids.concat(),
            &layout,
            &vec![hidden; cases.len()],
            &normalize,
        )
        .unwrap();
    for ((case, vector), normalized) in cases.iter().zip(&got).zip(&normalize) {
        let unit = fixture::floats(&case["embedding"]);
        let scale = if *normalized {
            1.0
        } else {
            case["norm_before_normalize"].as_f64().unwrap() as f32
        };
        let want: Vec<f32> = unit.iter().map(|v| v * scale).collect();
        // The raw vectors' values are up to `scale` times larger: compare relative to it.
        let diff = fixture::max_abs_diff(vector, &want) / scale;
        assert!(diff < 2e-5, "case {}: max abs diff {diff}", case["id"]);
    }
}

#[test]
fn a_normalize_flag_per_sequence_is_required() {
    let model = load();
    let layout = BatchLayout::from_lengths(&[2, 1]).unwrap();
    let error = model
        .embed_each(&CpuBackend::F32, &[1, 2, 3], &layout, &[32, 32], &[true])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("1 normalize flags for 2 sequences"),
        "{error}"
    );
}
