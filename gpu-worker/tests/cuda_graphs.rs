//! CUDA graphs (`cuda::graphs`) on the qwen3-tiny fixture: replayed passes match
//! transformers' golden vectors and the same batches run op by op, a replay never returns an
//! earlier batch's vectors, and a recorded small batch agrees with a large one run op by op.
//! Without a CUDA device every test prints `skipped: no CUDA device` and returns.

mod cuda_support;
mod fixture;

use cuda_support::{gpu, graphs_gpu};
use gpu_worker::cuda::CudaBackend;
use gpu_worker::cuda::graphs::Bucket;
use gpu_worker::model::qwen3::Qwen3;
use gpu_worker::ops::{BatchLayout, Ops};

/// Largest recorded batch in these tests: every group of fixture cases (the longest case
/// has 2,011 tokens) is recorded.
const MAX_TOKENS: usize = 4096;

fn load(gpu: &CudaBackend) -> Qwen3<CudaBackend> {
    gpu_worker::model::load(&fixture::tiny_dir(), gpu).expect("fixture loads on the GPU")
}

fn embed(
    gpu: &CudaBackend,
    model: &Qwen3<CudaBackend>,
    ids: &[u32],
    lengths: &[usize],
) -> Vec<Vec<f32>> {
    let layout = BatchLayout::from_lengths(lengths).unwrap();
    let dims = vec![model.config().hidden_size; lengths.len()];
    model.embed(gpu, ids, &layout, &dims).unwrap()
}

/// Same bound as `cuda_model.rs`'s batch-composition test: only cuBLAS's choice of
/// algorithm by row count may move a vector.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let diff = fixture::max_abs_diff(got, want);
    assert!(
        diff <= 5e-3 && fixture::cosine(got, want) >= 0.9999,
        "{what}: diff {diff}"
    );
}

#[test]
fn replayed_passes_match_transformers_and_passes_run_op_by_op() {
    let (Some(eager), Some(graphs)) = (gpu(), graphs_gpu(MAX_TOKENS)) else {
        return;
    };
    let golden = fixture::golden();
    let (eager_model, graph_model) = (load(&eager), load(&graphs));
    let cases = fixture::case_ids(&golden);
    let want: Vec<Vec<f32>> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| fixture::floats(&case["embedding"]))
        .collect();
    // Twice over: the first round records most buckets, the second replays them.
    for round in 0..2 {
        for (i, ids) in cases.iter().enumerate() {
            let got = embed(&graphs, &graph_model, ids, &[ids.len()]).remove(0);
            let op_by_op = embed(&eager, &eager_model, ids, &[ids.len()]).remove(0);
            let cos = fixture::cosine(&got, &want[i]);
            assert!(cos >= 0.999, "round {round}, case {i}: cosine {cos}");
            assert_close(&got, &op_by_op, &format!("round {round}, case {i}"));
        }
    }
    for group in fixture::random_groups(cases.len(), 6, 5, 31) {
        let (ids, layout) = fixture::pack(&cases, &group);
        let lengths: Vec<usize> = group.iter().map(|&i| cases[i].len()).collect();
        let got = embed(&graphs, &graph_model, &ids, &lengths);
        let again = embed(&graphs, &graph_model, &ids, &lengths);
        assert_eq!(got, again, "{group:?}: a replay of the same batch differs");
        assert!(Bucket::of(layout.num_rows(), layout.num_seqs(), MAX_TOKENS).is_some());
        for (&i, got) in group.iter().zip(&got) {
            assert_close(
                got,
                &embed(&eager, &eager_model, &cases[i], &[cases[i].len()])[0],
                &format!("case {i} in {group:?}"),
            );
        }
    }
}

#[test]
fn a_replay_never_returns_the_previous_batch_of_its_bucket() {
    let Some(graphs) = graphs_gpu(MAX_TOKENS) else {
        return;
    };
    let model = load(&graphs);
    let cases = fixture::case_ids(&fixture::golden());
    // Two different cases of one bucket, run in turn: each must keep its own vector.
    let bucket = |i: usize| Bucket::of(cases[i].len(), 1, MAX_TOKENS);
    let (a, b) = (0..cases.len())
        .flat_map(|a| (a + 1..cases.len()).map(move |b| (a, b)))
        .find(|&(a, b)| bucket(a) == bucket(b) && cases[a] != cases[b])
        .expect("two cases share a bucket");
    let first_a = embed(&graphs, &model, &cases[a], &[cases[a].len()]);
    let first_b = embed(&graphs, &model, &cases[b], &[cases[b].len()]);
    assert_ne!(first_a, first_b, "cases {a} and {b} got one vector");
    for _ in 0..3 {
        assert_eq!(
            embed(&graphs, &model, &cases[a], &[cases[a].len()]),
            first_a
        );
        assert_eq!(
            embed(&graphs, &model, &cases[b], &[cases[b].len()]),
            first_b
        );
    }
}

#[test]
fn a_recorded_small_batch_agrees_with_a_large_one_run_op_by_op() {
    let Some(graphs) = graphs_gpu(32) else {
        return;
    };
    let model = load(&graphs);
    let cases = fixture::case_ids(&fixture::golden());
    let all: Vec<usize> = (0..cases.len()).collect();
    let (ids, layout) = fixture::pack(&cases, &all);
    assert!(
        Bucket::of(layout.num_rows(), layout.num_seqs(), 32).is_none(),
        "the whole fixture must be too large to record"
    );
    let lengths: Vec<usize> = cases.iter().map(Vec::len).collect();
    let large = embed(&graphs, &model, &ids, &lengths);
    let mut recorded = 0;
    for (i, ids) in cases.iter().enumerate() {
        if Bucket::of(ids.len(), 1, 32).is_none() {
            continue;
        }
        let small = embed(&graphs, &model, ids, &[ids.len()]).remove(0);
        assert_close(&small, &large[i], &format!("case {i}"));
        recorded += 1;
    }
    assert!(
        recorded >= 3,
        "only {recorded} cases are small enough to record"
    );
}

#[test]
fn two_models_on_one_backend_never_replay_each_other() {
    let (Some(eager), Some(graphs)) = (gpu(), graphs_gpu(MAX_TOKENS)) else {
        return;
    };
    let load_both = |gpu: &CudaBackend| {
        [fixture::tiny_dir(), fixture::reranker_dir()]
            .map(|dir| gpu_worker::model::load(&dir, gpu).expect("fixture loads on the GPU"))
    };
    let (eager_models, graph_models) = (load_both(&eager), load_both(&graphs));
    let ids: Vec<u32> = (0..12).map(|i| 1000 + 31 * i).collect();
    let layout = BatchLayout::from_lengths(&[ids.len()]).unwrap();
    // The same batch through both models in turn: one bucket, two recordings.
    for round in 0..3 {
        for (model, (eager_model, graph_model)) in
            eager_models.iter().zip(&graph_models).enumerate()
        {
            let want = eager.to_host(&eager_model.last_hidden(&eager, &ids, &layout).unwrap());
            let got = graphs.to_host(&graph_model.last_hidden(&graphs, &ids, &layout).unwrap());
            // Hidden states before the final norm: not unit vectors, so compared by direction;
            // another model's would point elsewhere.
            let cos = fixture::cosine(&got.unwrap(), &want.unwrap());
            assert!(cos >= 0.999, "round {round}, model {model}: cosine {cos}");
        }
    }
}

#[test]
fn lone_queries_are_recorded_before_they_come() {
    let Some(graphs) = graphs_gpu(2048) else {
        return;
    };
    let model = load(&graphs);
    let recorded = gpu_worker::engine::record_query_graphs(&graphs, &model, 2048)
        .expect("graphs stay on while queries are recorded");
    // One per single-sequence bucket up to 512 tokens: 16, 20, 24, 28, 32, 40, .., 512.
    assert_eq!(recorded, 21);
    let cases = fixture::case_ids(&fixture::golden());
    for ids in cases.iter().filter(|ids| ids.len() < 512) {
        embed(&graphs, &model, ids, &[ids.len()]);
    }
    assert_eq!(
        graphs.recorded_graphs(),
        Some(recorded),
        "a lone query needed a recording of its own"
    );
}
