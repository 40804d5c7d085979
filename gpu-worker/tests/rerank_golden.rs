//! Qwen3-Reranker scoring on the CPU backend against transformers' float32 logits in the
//! qwen3-tiny-reranker fixture.

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::cpu::linear_bf16::Kernel;
use gpu_worker::model::ModelError;
use gpu_worker::model::rerank::{AnswerTokens, NO_TOKEN_ID, RerankScore, Reranker, YES_TOKEN_ID};
use gpu_worker::ops::{BatchLayout, Ops};
use serde_json::Value;

fn golden() -> Value {
    fixture::read_json(&fixture::reranker_dir().join("golden_rerank.json"))
}

fn load() -> Reranker<CpuBackend> {
    Reranker::load(&fixture::reranker_dir(), &CpuBackend::F32).expect("fixture loads")
}

fn score_one(reranker: &Reranker<CpuBackend>, input_ids: &[u32]) -> RerankScore {
    let layout = BatchLayout::from_lengths(&[input_ids.len()]).unwrap();
    let mut out = reranker
        .score(&CpuBackend::F32, input_ids, &layout)
        .unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn answer_tokens_match_the_fixture() {
    let golden = golden();
    assert_eq!(golden["token_ids"]["yes"], YES_TOKEN_ID);
    assert_eq!(golden["token_ids"]["no"], NO_TOKEN_ID);
    assert_eq!(
        load().answer_tokens(),
        AnswerTokens {
            yes: YES_TOKEN_ID,
            no: NO_TOKEN_ID
        }
    );
}

#[test]
fn every_case_matches_transformers() {
    let golden = golden();
    let reranker = load();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let (mut max_logit, mut max_score) = (0.0f64, 0.0f64);
    for case in cases {
        let got = score_one(&reranker, &fixture::ids(&case["input_ids"]));
        let want = |key: &str| case[key].as_f64().expect("number");
        let d_yes = (f64::from(got.logit_yes) - want("logit_yes")).abs();
        let d_no = (f64::from(got.logit_no) - want("logit_no")).abs();
        let d_score = (f64::from(got.score) - want("score")).abs();
        assert!(d_yes < 1e-4, "case {}: logit_yes diff {d_yes}", case["id"]);
        assert!(d_no < 1e-4, "case {}: logit_no diff {d_no}", case["id"]);
        assert!(d_score < 1e-5, "case {}: score diff {d_score}", case["id"]);
        max_logit = max_logit.max(d_yes).max(d_no);
        max_score = max_score.max(d_score);
    }
    println!("max |logit diff| {max_logit:e}, max |score diff| {max_score:e}");
}

/// The bf16 CPU backend (bf16 weights, the `(2, hidden)` head matrix packed like any other)
/// stays within the CUDA backend's tolerances of transformers' f32 logits, on the portable
/// kernel and on `avx512_bf16` and AMX where the CPU has them.
#[test]
fn bf16_scores_stay_close_to_transformers() {
    let golden = golden();
    for kernel in Kernel::all_supported() {
        let backend = CpuBackend::with_kernel(kernel);
        let reranker = Reranker::load(&fixture::reranker_dir(), &backend).expect("fixture loads");
        let (mut max_logit, mut max_score) = (0.0f64, 0.0f64);
        for case in golden["cases"].as_array().unwrap() {
            let ids = fixture::ids(&case["input_ids"]);
            let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
            let got = reranker.score(&backend, &ids, &layout).unwrap().remove(0);
            let want = |key: &str| case[key].as_f64().expect("number");
            let d_logit = (f64::from(got.logit_yes) - want("logit_yes"))
                .abs()
                .max((f64::from(got.logit_no) - want("logit_no")).abs());
            let d_score = (f64::from(got.score) - want("score")).abs();
            assert!(
                d_logit < 0.05 && d_score < 0.01,
                "{}: case {}: logit diff {d_logit}, score diff {d_score}",
                backend.device_info().description,
                case["id"]
            );
            max_logit = max_logit.max(d_logit);
            max_score = max_score.max(d_score);
        }
        println!(
            "{}: max |logit diff| {max_logit:e}, max |score diff| {max_score:e}",
            backend.device_info().description
        );
    }
}

#[test]
fn batch_composition_does_not_change_scores() {
    let golden = golden();
    let reranker = load();
    let cases = fixture::case_ids(&golden);
    let alone: Vec<RerankScore> = cases.iter().map(|c| score_one(&reranker, c)).collect();

    // Everything in one batch, in fixture order.
    let lengths: Vec<usize> = cases.iter().map(Vec::len).collect();
    let layout = BatchLayout::from_lengths(&lengths).unwrap();
    let packed: Vec<u32> = cases.concat();
    let all = reranker.score(&CpuBackend::F32, &packed, &layout).unwrap();
    assert_eq!(all.len(), cases.len());

    let mut batches = vec![((0..cases.len()).collect::<Vec<_>>(), all)];
    for group in fixture::random_groups(cases.len(), 4, 5, 11) {
        let (packed, layout) = fixture::pack(&cases, &group);
        let out = reranker.score(&CpuBackend::F32, &packed, &layout).unwrap();
        batches.push((group, out));
    }
    let mut max_diff = 0.0f32;
    for (group, out) in &batches {
        assert_eq!(group.len(), out.len());
        for (&i, got) in group.iter().zip(out) {
            let want = alone[i];
            let diff = (got.logit_yes - want.logit_yes)
                .abs()
                .max((got.logit_no - want.logit_no).abs())
                .max((got.score - want.score).abs());
            assert!(diff <= 1e-6, "case {i} in batch {group:?}: diff {diff}");
            max_diff = max_diff.max(diff);
        }
    }
    println!("max diff across batch compositions {max_diff:e}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let reranker = load();
    let vocab = reranker.model().config().vocab_size as u32;
    let layout = BatchLayout::from_lengths(&[2]).unwrap();
    assert!(matches!(
        reranker.score(&CpuBackend::F32, &[1, vocab], &layout),
        Err(ModelError::Input(_))
    ));
    assert!(matches!(
        reranker.score(&CpuBackend::F32, &[1, 2, 3], &layout),
        Err(ModelError::Input(_))
    ));
}

#[test]
fn answer_tokens_outside_the_vocabulary_are_refused() {
    let tokens = AnswerTokens {
        yes: YES_TOKEN_ID,
        no: u32::MAX,
    };
    let err = Reranker::load_with_tokens(&fixture::reranker_dir(), &CpuBackend::F32, tokens)
        .err()
        .expect("token outside the vocabulary");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

/// A stored `lm_head.weight` wins over the tied embeddings: with the `yes` and `no` rows of the
/// embedding table swapped in it, the logits swap and the score becomes `1 - score`.
#[test]
fn stored_lm_head_is_preferred_over_tied_embeddings() {
    use gpu_worker::model::config::Qwen3Config;
    use gpu_worker::model::weights::Weights;

    let dir = std::env::temp_dir().join(format!("rerank-lm-head-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra = dir.join("lm_head.safetensors");
    let config = Qwen3Config::from_file(&fixture::reranker_dir().join("config.json")).unwrap();
    let (vocab, hidden) = (config.vocab_size, config.hidden_size);
    {
        let fixture = Weights::open(&fixture::reranker_dir()).unwrap();
        let embed = fixture
            .get("embed_tokens.weight", &[vocab, hidden])
            .unwrap();
        let row_bytes = hidden * embed.dtype.size();
        let mut data = embed.data.to_vec();
        let (yes, no) = (YES_TOKEN_ID as usize, NO_TOKEN_ID as usize);
        let yes_row = data[yes * row_bytes..(yes + 1) * row_bytes].to_vec();
        data.copy_within(no * row_bytes..(no + 1) * row_bytes, yes * row_bytes);
        data[no * row_bytes..(no + 1) * row_bytes].copy_from_slice(&yes_row);
        let dtype = match embed.dtype {
            gpu_worker::ops::Dtype::Bf16 => safetensors::Dtype::BF16,
            gpu_worker::ops::Dtype::F16 => safetensors::Dtype::F16,
            gpu_worker::ops::Dtype::F32 => safetensors::Dtype::F32,
        };
        let view = safetensors::tensor::TensorView::new(dtype, vec![vocab, hidden], &data).unwrap();
        safetensors::serialize_to_file([("lm_head.weight", view)], None, &extra).unwrap();
    }
    let weights = Weights::from_files(&[
        fixture::reranker_dir().join("model.safetensors"),
        extra.clone(),
    ])
    .unwrap();
    let swapped = Reranker::from_weights(
        &CpuBackend::F32,
        &weights,
        config.clone(),
        AnswerTokens::default(),
    );
    let tied = load();
    let input_ids = fixture::ids(&golden()["cases"][0]["input_ids"]);
    let (got, want) = (
        score_one(&swapped.unwrap(), &input_ids),
        score_one(&tied, &input_ids),
    );
    assert_eq!(got.logit_yes, want.logit_no);
    assert_eq!(got.logit_no, want.logit_yes);
    assert!(
        (got.score - (1.0 - want.score)).abs() < 1e-6,
        "{got:?} vs {want:?}"
    );

    // Untied embeddings and no stored head: refused, not silently tied.
    let untied = Qwen3Config {
        tie_word_embeddings: false,
        ..config
    };
    let fixture = Weights::open(&fixture::reranker_dir()).unwrap();
    let err = Reranker::from_weights(&CpuBackend::F32, &fixture, untied, AnswerTokens::default())
        .err()
        .expect("no lm_head.weight");
    assert!(matches!(err, ModelError::MissingTensor(_)), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
