//! The CPU backend against transformers' float32 outputs in the qwen3-tiny fixture.

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::model::qwen3::{Qwen3, TracePoint};
use gpu_worker::ops::{BatchLayout, Ops};

fn load() -> Qwen3<CpuBackend> {
    gpu_worker::model::load(&fixture::tiny_dir(), &CpuBackend::F32).expect("fixture loads")
}

fn embed_one(model: &Qwen3<CpuBackend>, input_ids: &[u32], dims: usize) -> Vec<f32> {
    let layout = BatchLayout::from_lengths(&[input_ids.len()]).unwrap();
    let mut out = model
        .embed(&CpuBackend::F32, input_ids, &layout, &[dims])
        .unwrap();
    out.remove(0)
}

#[test]
fn every_case_matches_transformers() {
    let golden = fixture::golden();
    let model = load();
    let hidden = model.config().hidden_size;
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 17);
    for case in cases {
        let got = embed_one(&model, &fixture::ids(&case["input_ids"]), hidden);
        let want = fixture::floats(&case["embedding"]);
        let diff = fixture::max_abs_diff(&got, &want);
        assert!(diff < 2e-5, "case {}: max abs diff {diff}", case["id"]);
    }
}

#[test]
fn matryoshka_examples_match() {
    let golden = fixture::golden();
    let model = load();
    let cases = golden["cases"].as_array().unwrap();
    for example in golden["mrl"].as_array().unwrap() {
        let case = cases.iter().find(|c| c["id"] == example["id"]).unwrap();
        let dim = example["dim"].as_u64().unwrap() as usize;
        let got = embed_one(&model, &fixture::ids(&case["input_ids"]), dim);
        let diff = fixture::max_abs_diff(&got, &fixture::floats(&example["embedding"]));
        assert!(diff < 2e-5, "mrl {}: max abs diff {diff}", example["id"]);
    }
}

#[test]
fn layer_by_layer_trace_matches() {
    let golden = fixture::golden();
    let trace = &golden["trace"];
    let layer0 = &trace["layer0"];
    let model = load();
    let c = model.config().clone();
    let input_ids = fixture::ids(&trace["input_ids"]);
    let t = input_ids.len();
    let (q_w, kv_w) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let layout = BatchLayout::from_lengths(&[t]).unwrap();

    let mut seen = Vec::new();
    let mut check = |point: TracePoint, got: &[f32], cols: usize| {
        let rows = got.len() / cols;
        let col_range = |lo: usize, hi: usize| -> Vec<f32> {
            got.chunks_exact(cols)
                .flat_map(|r| r[lo..hi].to_vec())
                .collect()
        };
        let expect = |name: &str, got: Vec<f32>, want: Vec<f32>| {
            let diff = fixture::max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "{point:?} {name}: max abs diff {diff}");
        };
        match point {
            TracePoint::Embeddings => expect(
                "embed_tokens",
                got.to_vec(),
                fixture::floats(&trace["embed_tokens"]),
            ),
            TracePoint::InputNorm(0) => expect(
                "input_layernorm",
                got.to_vec(),
                fixture::floats(&layer0["input_layernorm"]),
            ),
            TracePoint::QkvProj(0) => {
                expect(
                    "q_proj",
                    col_range(0, q_w),
                    fixture::floats(&layer0["q_proj"]),
                );
                expect(
                    "k_proj",
                    col_range(q_w, q_w + kv_w),
                    fixture::floats(&layer0["k_proj"]),
                );
                expect(
                    "v_proj",
                    col_range(q_w + kv_w, q_w + 2 * kv_w),
                    fixture::floats(&layer0["v_proj"]),
                );
            }
            TracePoint::QkRope(0) => {
                expect(
                    "q_rope",
                    col_range(0, q_w),
                    fixture::floats(&layer0["q_rope"]),
                );
                expect(
                    "k_rope",
                    col_range(q_w, q_w + kv_w),
                    fixture::floats(&layer0["k_rope"]),
                );
            }
            TracePoint::Attention(0) => expect(
                "attn",
                got.to_vec(),
                fixture::floats(&layer0["attn_out_before_o_proj"]),
            ),
            TracePoint::OProj(0) => {
                expect("o_proj", got.to_vec(), fixture::floats(&layer0["o_proj"]))
            }
            TracePoint::PostAttentionNorm(0) => expect(
                "post_attention_layernorm",
                got.to_vec(),
                fixture::floats(&layer0["post_attention_layernorm"]),
            ),
            TracePoint::Mlp(0) => {
                expect("mlp_out", got.to_vec(), fixture::floats(&layer0["mlp_out"]))
            }
            TracePoint::AfterLayer(layer) => {
                let all = fixture::floats(&trace["after_layer"][layer]);
                // The final layer keeps only the pooled (last) row.
                let want = all[all.len() - rows * cols..].to_vec();
                expect("after_layer", got.to_vec(), want);
            }
            _ => return,
        }
        seen.push(point);
    };
    let last = model
        .last_hidden_traced(
            &CpuBackend::F32,
            &input_ids,
            &layout,
            &mut |point, tensor| {
                let host = CpuBackend::F32.to_host(tensor).unwrap();
                check(point, &host, tensor.cols);
            },
        )
        .unwrap();
    assert_eq!(seen.len(), 10, "trace points checked: {seen:?}");
    // The last hidden state is the final layer's residual stream: one row, the last token's.
    let after_last = fixture::floats(&trace["after_layer"][c.num_hidden_layers - 1]);
    assert_eq!((last.rows, last.cols), (1, c.hidden_size));
    let diff = fixture::max_abs_diff(&last.data, &after_last[after_last.len() - last.cols..]);
    assert!(diff < 1e-5, "last hidden: max abs diff {diff}");
    let embedding = embed_one(&model, &input_ids, c.hidden_size);
    let diff = fixture::max_abs_diff(&embedding, &fixture::floats(&trace["embedding"]));
    assert!(diff < 2e-5, "trace embedding: max abs diff {diff}");

    // q_norm alone (the fused op hides it): the CPU head norm on the golden q_proj.
    let q_proj = fixture::floats(&layer0["q_proj"]);
    let q_norm_w = gpu_worker::model::weights::Weights::open(&fixture::tiny_dir())
        .unwrap()
        .get("layers.0.self_attn.q_norm.weight", &[c.head_dim])
        .unwrap()
        .to_f32();
    let mut normed = vec![0.0; q_proj.len()];
    gpu_worker::cpu::rms_norm::rms_norm(&q_proj, &q_norm_w, c.rms_norm_eps, &mut normed);
    let diff = fixture::max_abs_diff(&normed, &fixture::floats(&layer0["q_norm"]));
    assert!(diff < 1e-5, "q_norm: max abs diff {diff}");
}

#[test]
fn batch_composition_does_not_change_vectors() {
    let golden = fixture::golden();
    let model = load();
    let hidden = model.config().hidden_size;
    let cases = fixture::case_ids(&golden);
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|ids| embed_one(&model, ids, hidden))
        .collect();

    for group in fixture::random_groups(cases.len(), 4, 6, 7) {
        let (packed, layout) = fixture::pack(&cases, &group);
        let out = model
            .embed(
                &CpuBackend::F32,
                &packed,
                &layout,
                &vec![hidden; group.len()],
            )
            .unwrap();
        for (&i, got) in group.iter().zip(&out) {
            let diff = fixture::max_abs_diff(got, &alone[i]);
            assert!(diff <= 1e-6, "case {i} in batch {group:?}: diff {diff}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load();
    let layout = BatchLayout::from_lengths(&[2]).unwrap();
    let vocab = model.config().vocab_size as u32;
    assert!(
        model
            .embed(&CpuBackend::F32, &[1, vocab], &layout, &[32])
            .is_err()
    );
    assert!(
        model
            .embed(&CpuBackend::F32, &[1, 2], &layout, &[0])
            .is_err()
    );
    assert!(
        model
            .embed(&CpuBackend::F32, &[1, 2], &layout, &[33])
            .is_err()
    );
    assert!(
        model
            .embed(&CpuBackend::F32, &[1, 2, 3], &layout, &[32])
            .is_err()
    );
}
