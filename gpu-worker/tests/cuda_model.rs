//! The CUDA backend running the whole model on the qwen3-tiny fixture: transformers' golden
//! vectors, the CPU backend layer by layer, batch-composition invariance, and memory limits
//! that refuse work instead of crashing. Without a CUDA device every test prints
//! `skipped: no CUDA device` and returns. The fixture is read from `QWEN3_TINY_DIR`, else
//! from `../shared/fixtures/qwen3-tiny`.

mod cuda_support;
mod fixture;

use cuda_support::{fp8_gpu, fused_q_norm_rope_gpu, gpu};
use gpu_worker::cpu::CpuBackend;
use gpu_worker::cuda::memory::activation_bytes_per_token;
use gpu_worker::cuda::{ActDtype, CudaBackend, CudaOptions};
use gpu_worker::model::ModelError;
use gpu_worker::model::qwen3::{Qwen3, TracePoint};
use gpu_worker::model::rerank::Reranker;
use gpu_worker::ops::{BatchLayout, OpError, Ops};

fn load(gpu: &CudaBackend) -> Qwen3<CudaBackend> {
    gpu_worker::model::load(&fixture::tiny_dir(), gpu).expect("fixture loads on the GPU")
}

fn embed_one(
    gpu: &CudaBackend,
    model: &Qwen3<CudaBackend>,
    input_ids: &[u32],
    dims: usize,
) -> Vec<f32> {
    let layout = BatchLayout::from_lengths(&[input_ids.len()]).unwrap();
    model
        .embed(gpu, input_ids, &layout, &[dims])
        .unwrap()
        .remove(0)
}

/// bf16 products keep an embedding within cosine 0.999 of transformers' f32 one. A NumPy
/// model of this backend's rounding points gives at worst 0.999993 on the fixture.
const MIN_COSINE: f32 = 0.999;
/// The same model gives at most 1.7e-3 per component (unit vectors of 32 values).
const MAX_ABS_DIFF: f32 = 5e-3;

#[test]
fn every_case_matches_transformers() {
    let Some(gpu) = gpu() else { return };
    let golden = fixture::golden();
    let model = load(&gpu);
    let hidden = model.config().hidden_size;
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 17);
    let mut worst = (f32::INFINITY, String::new());
    for case in cases {
        let got = embed_one(&gpu, &model, &fixture::ids(&case["input_ids"]), hidden);
        let want = fixture::floats(&case["embedding"]);
        let (cos, diff) = (
            fixture::cosine(&got, &want),
            fixture::max_abs_diff(&got, &want),
        );
        eprintln!(
            "case {}: cosine {cos:.6}, max abs diff {diff:.3e}",
            case["id"]
        );
        assert!(cos >= MIN_COSINE, "case {}: cosine {cos}", case["id"]);
        assert!(
            diff <= MAX_ABS_DIFF,
            "case {}: max abs diff {diff}",
            case["id"]
        );
        if cos < worst.0 {
            worst = (cos, case["id"].to_string());
        }
    }
    eprintln!("lowest cosine {:.6} (case {})", worst.0, worst.1);
    for example in golden["mrl"].as_array().unwrap() {
        let case = cases.iter().find(|c| c["id"] == example["id"]).unwrap();
        let dim = example["dim"].as_u64().unwrap() as usize;
        let got = embed_one(&gpu, &model, &fixture::ids(&case["input_ids"]), dim);
        let cos = fixture::cosine(&got, &fixture::floats(&example["embedding"]));
        eprintln!("mrl {} dim {dim}: cosine {cos:.6}", example["id"]);
        assert!(cos >= MIN_COSINE, "mrl {}: cosine {cos}", example["id"]);
    }
}

/// Every traced activation of the trace case, GPU against CPU: the first op to drift
/// stands out in the printed errors.
#[test]
fn trace_follows_the_cpu_layer_by_layer() {
    let Some(gpu) = gpu() else { return };
    let golden = fixture::golden();
    let input_ids = fixture::ids(&golden["trace"]["input_ids"]);
    let layout = BatchLayout::from_lengths(&[input_ids.len()]).unwrap();
    let cpu_model = gpu_worker::model::load(&fixture::tiny_dir(), &CpuBackend::F32).unwrap();
    let mut want: Vec<(TracePoint, Vec<f32>)> = Vec::new();
    cpu_model
        .last_hidden_traced(&CpuBackend::F32, &input_ids, &layout, &mut |point, x| {
            want.push((point, x.data.clone()))
        })
        .unwrap();
    let model = load(&gpu);
    let mut got: Vec<(TracePoint, Vec<f32>)> = Vec::new();
    model
        .last_hidden_traced(&gpu, &input_ids, &layout, &mut |point, x| {
            got.push((point, gpu.to_host(x).unwrap()))
        })
        .unwrap();
    assert_eq!(got.len(), want.len());
    for ((point, g), (want_point, w)) in got.iter().zip(&want) {
        assert_eq!(point, want_point);
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let relative = fixture::max_abs_diff(g, w) / scale.max(1e-6);
        eprintln!(
            "{point:?}: max abs diff {:.3e} (relative to max {relative:.3e})",
            fixture::max_abs_diff(g, w)
        );
        assert!(relative < 5e-2, "{point:?} drifts: {relative}");
    }
}

/// The decoder's last hidden states `(sequences, hidden)` of a packed batch, GPU against CPU:
/// the f32 residual stream that both heads (pooling, reranking) read.
#[test]
fn last_hidden_follows_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let golden = fixture::golden();
    let cases = fixture::case_ids(&golden);
    let group: Vec<usize> = (0..cases.len().min(5)).collect();
    let (packed, layout) = fixture::pack(&cases, &group);
    let cpu_model = gpu_worker::model::load(&fixture::tiny_dir(), &CpuBackend::F32).unwrap();
    let want = cpu_model
        .last_hidden(&CpuBackend::F32, &packed, &layout)
        .unwrap();
    let model = load(&gpu);
    let got = model.last_hidden(&gpu, &packed, &layout).unwrap();
    assert_eq!((got.rows(), got.cols()), (want.rows, want.cols));
    assert_eq!(got.rows(), group.len());
    assert_eq!(got.dtype(), ActDtype::F32);
    let got = gpu.to_host(&got).unwrap();
    let scale = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let relative = fixture::max_abs_diff(&got, &want.data) / scale.max(1e-6);
    eprintln!("last hidden: max abs diff relative to max {relative:.3e}");
    assert!(relative < 5e-2, "last hidden drifts: {relative}");
}

#[test]
fn batch_composition_barely_changes_vectors() {
    let Some(gpu) = gpu() else { return };
    let golden = fixture::golden();
    let model = load(&gpu);
    let hidden = model.config().hidden_size;
    let cases = fixture::case_ids(&golden);
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|ids| embed_one(&gpu, &model, ids, hidden))
        .collect();

    let mut worst = 0.0f32;
    for group in fixture::random_groups(cases.len(), 4, 6, 11) {
        let (packed, layout) = fixture::pack(&cases, &group);
        let out = model
            .embed(&gpu, &packed, &layout, &vec![hidden; group.len()])
            .unwrap();
        for (&i, got) in group.iter().zip(&out) {
            let diff = fixture::max_abs_diff(got, &alone[i]);
            worst = worst.max(diff);
            assert!(
                diff <= 5e-3 && fixture::cosine(got, &alone[i]) >= 0.9999,
                "case {i} in batch {group:?}: diff {diff}"
            );
        }
    }
    // Our kernels are batch-invariant by construction; only cuBLAS's choice of algorithm by
    // row count can move a bit. 0 means bit-identical vectors.
    eprintln!("largest change from batching: {worst:.3e}");
}

#[test]
fn q_norms_in_the_attention_kernel_give_the_same_vectors() {
    let (Some(gpu), Some(fused)) = (gpu(), fused_q_norm_rope_gpu()) else {
        return;
    };
    let golden = fixture::golden();
    let cases = fixture::case_ids(&golden);
    let (unfused_model, fused_model) = (load(&gpu), load(&fused));
    let hidden = fused_model.config().hidden_size;
    let all: Vec<usize> = (0..cases.len()).collect();
    let (packed, layout) = fixture::pack(&cases, &all);
    let dims = vec![hidden; cases.len()];
    let want = unfused_model.embed(&gpu, &packed, &layout, &dims).unwrap();
    let got = fused_model.embed(&fused, &packed, &layout, &dims).unwrap();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let cosine = fixture::cosine(&got[i], &fixture::floats(&case["embedding"]));
        assert!(cosine >= MIN_COSINE, "case {}: cosine {cosine}", case["id"]);
        // The same arithmetic in another kernel: the same bits (cuda_parity checks the op).
        assert_eq!(
            got[i], want[i],
            "case {}: fused and unfused differ",
            case["id"]
        );
    }
}

#[test]
fn memory_limits_are_errors_not_crashes() {
    let Some(gpu) = gpu() else { return };
    let model = load(&gpu);
    // A budget the batcher asks for is kept; one token more is refused before any work.
    let bytes_per_token = activation_bytes_per_token(model.config());
    let plan = gpu.plan_memory(bytes_per_token, Some(64)).unwrap();
    eprintln!("{plan:?}");
    assert_eq!(gpu.max_batch_tokens(), Some(64));
    let ids = vec![100u32; 65];
    let layout = BatchLayout::from_lengths(&[40, 25]).unwrap();
    let err = model.embed(&gpu, &ids, &layout, &[16, 16]).unwrap_err();
    assert!(
        matches!(err, ModelError::Op(OpError::OutOfMemory(_))),
        "{err}"
    );
    let layout = BatchLayout::from_lengths(&[40, 24]).unwrap();
    assert!(model.embed(&gpu, &ids[..64], &layout, &[16, 16]).is_ok());
    // A budget larger than the whole device is a start-up error.
    assert!(
        gpu.plan_memory(bytes_per_token, Some(usize::MAX / 2))
            .is_err()
    );

    // A share smaller than the overhead leaves no room for weights: the load fails with the
    // numbers, not a crash.
    let half_gib = (1u64 << 29) as f64 / gpu.device().total_memory as f64;
    let tiny = CudaBackend::new(
        0,
        CudaOptions {
            gpu_memory_fraction: half_gib,
            ..CudaOptions::default()
        },
    );
    match tiny {
        Ok(tiny) => {
            let err = gpu_worker::model::load(&fixture::tiny_dir(), &tiny)
                .err()
                .expect("weights over the share are refused");
            eprintln!("{err}");
            assert!(
                matches!(err, ModelError::Op(OpError::OutOfMemory(_))),
                "{err}"
            );
        }
        Err(e) => eprintln!("{e}"),
    }
    assert!(
        CudaBackend::new(
            0,
            CudaOptions {
                gpu_memory_fraction: 0.0,
                ..CudaOptions::default()
            }
        )
        .is_err()
    );
}

#[test]
fn device_is_described() {
    let Some(gpu) = gpu() else { return };
    let info = gpu.device_info();
    eprintln!("{info:?}");
    assert!(info.memory_total.is_some_and(|t| t > 0));
    assert!(info.memory_used.is_some());
    assert_eq!(gpu.name(), "cuda-bf16");
}

/// bf16 logits of the tiny reranker stay this close to transformers' f32 ones (they are about
/// 1.4 and -0.5; bf16 keeps 8 significant bits).
const MAX_LOGIT_DIFF: f64 = 0.05;
/// ... and its yes-probabilities this close.
const MAX_SCORE_DIFF: f64 = 0.01;

/// The reranker's head (final norm and the `(2, hidden)` yes/no matrix) runs on the device;
/// its scores match transformers alone and packed.
#[test]
fn reranker_scores_match_transformers() {
    let Some(gpu) = gpu() else { return };
    let golden = fixture::read_json(&fixture::reranker_dir().join("golden_rerank.json"));
    let reranker =
        Reranker::load(&fixture::reranker_dir(), &gpu).expect("reranker fixture loads on the GPU");
    let cases: Vec<_> = golden["cases"].as_array().unwrap().iter().collect();
    assert!(cases.len() >= 8);
    let inputs = fixture::case_ids(&golden);
    // Each case alone, then all of them in one packed batch: both within the tolerances.
    let alone: Vec<_> = inputs
        .iter()
        .map(|ids| {
            let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
            reranker.score(&gpu, ids, &layout).unwrap().remove(0)
        })
        .collect();
    let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let layout = BatchLayout::from_lengths(&lengths).unwrap();
    let packed = reranker.score(&gpu, &inputs.concat(), &layout).unwrap();
    assert_eq!(packed.len(), cases.len());
    let (mut max_logit, mut max_score) = (0.0f64, 0.0f64);
    for (i, case) in cases.iter().enumerate() {
        let want = |key: &str| case[key].as_f64().expect("number");
        for got in [&alone[i], &packed[i]] {
            let d_logit = (f64::from(got.logit_yes) - want("logit_yes"))
                .abs()
                .max((f64::from(got.logit_no) - want("logit_no")).abs());
            let d_score = (f64::from(got.score) - want("score")).abs();
            assert!(
                d_logit < MAX_LOGIT_DIFF && d_score < MAX_SCORE_DIFF,
                "case {}: logit diff {d_logit}, score diff {d_score}",
                case["id"]
            );
            max_logit = max_logit.max(d_logit);
            max_score = max_score.max(d_score);
        }
    }
    println!("reranker: largest |logit diff| {max_logit:e}, largest |score diff| {max_score:e}");
}

/// The test-only fault hook's `device_fault` on the real device: a kernel traps, the context
/// is left in a sticky error, and the device thread turns the pass into a lost device, as it
/// would an illegal address or an Xid (then the worker leaves: `tests/tests/faults/device.rs`
/// drives that path with a panic). Every later batch fails the same way.
///
/// The sticky error poisons the process's context for every test, so the test runs itself
/// again in a child process (this binary, this test alone) and checks what the child said.
#[test]
fn a_sticky_device_error_loses_the_device_for_good() {
    const CHILD: &str = "QWEN3_STICKY_ERROR_CHILD";
    const NAME: &str = "a_sticky_device_error_loses_the_device_for_good";
    if gpu().is_none() {
        return;
    }
    if std::env::var_os(CHILD).is_none() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("the test binary runs again");
        let said = String::from_utf8_lossy(&child.stderr);
        assert!(child.status.success(), "the child failed: {said}");
        assert!(
            said.contains("lost: "),
            "the child did not get that far: {said}"
        );
        return;
    }
    sticky_error_in_this_process();
}

/// [`a_sticky_device_error_loses_the_device_for_good`]'s body, in its own process.
fn sticky_error_in_this_process() {
    use gpu_worker::device::{DeviceHandle, FaultAction, FaultHook};
    use gpu_worker::engine::{BackendChoice, Dtype, EngineError, EngineOptions, Work};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let options = EngineOptions {
            backend: BackendChoice::Cuda,
            dtype: Dtype::Auto,
            ..EngineOptions::cpu()
        };
        let hook = FaultHook {
            token_id: 7,
            action: FaultAction::DeviceFault,
        };
        let task = common::subjects::Task::Embed;
        let device = DeviceHandle::start(fixture::tiny_dir(), options, task, Some(hook))
            .await
            .expect("the tiny model loads on the GPU");
        let embed = || Work::Embed {
            dims: vec![8],
            normalize: vec![true],
        };
        assert!(device.run(1, vec![1, 2, 3], vec![3], embed()).await.is_ok());
        match device.run(2, vec![1, 7, 3], vec![3], embed()).await {
            Err(EngineError::DeviceLost(reason)) => {
                eprintln!("lost: {reason}");
                assert!(reason.contains("CUDA_ERROR"), "{reason}");
            }
            other => panic!("expected a lost device, got {other:?}"),
        }
        match device.run(3, vec![1, 2, 3], vec![3], embed()).await {
            Err(EngineError::DeviceLost(reason)) => assert!(reason.contains("has stopped")),
            other => panic!("expected a lost device, got {other:?}"),
        }
    });
}

/// `dtype = fp8` on the real device (compute capability 9.0 and newer): the qwen3-tiny cases
/// stay within the FP8 CPU twin's accuracy of transformers (`golden_fp8_twin.rs`, worst
/// cosine 0.99915) and close to the twin itself.
#[test]
fn fp8_vectors_match_transformers_and_the_cpu_twin() {
    use gpu_worker::cpu::fp8_twin::Fp8Twin;
    let Some(gpu) = fp8_gpu() else { return };
    assert_eq!(gpu.name(), "cuda-fp8");
    let model = load(&gpu);
    let twin = gpu_worker::model::load(&fixture::tiny_dir(), &Fp8Twin).expect("fixture loads");
    let hidden = model.config().hidden_size;
    let golden = fixture::golden();
    for case in golden["cases"].as_array().unwrap() {
        let ids = fixture::ids(&case["input_ids"]);
        let got = embed_one(&gpu, &model, &ids, hidden);
        let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
        let twin_vector = twin
            .embed(&Fp8Twin, &ids, &layout, &[hidden])
            .unwrap()
            .remove(0);
        let (to_golden, to_twin) = (
            fixture::cosine(&got, &fixture::floats(&case["embedding"])),
            fixture::cosine(&got, &twin_vector),
        );
        eprintln!(
            "{}: fp8 cosine to transformers {to_golden:.6}, to the twin {to_twin:.6}",
            case["id"]
        );
        assert!(to_golden >= 0.998, "{}: {to_golden}", case["id"]);
        assert!(to_twin >= 0.998, "{}: {to_twin}", case["id"]);
    }
}
