//! `bench --profile`'s op times (`gpu_worker::profile`) on the CPU backend and the
//! qwen3-tiny fixture: every op call of a pass is counted once, the times fit in the pass,
//! and profiling leaves the vectors as they were. The CUDA clock (events) runs in
//! `deploy/gpu/check.sh`'s profiled bench rows.

mod fixture;

use std::sync::Arc;
use std::time::Instant;

use common::subjects::Task;
use gpu_worker::engine::{self, EngineOptions, Output, Work};
use gpu_worker::profile::OpTimes;

fn vectors(output: Output) -> Vec<Vec<f32>> {
    match output {
        Output::Vectors(vectors) => vectors,
        Output::Scores(_) => panic!("an embedding model returned scores"),
    }
}

#[test]
fn every_op_call_of_a_pass_is_timed_once_and_vectors_are_unchanged() {
    let dir = fixture::tiny_dir();
    let (config, _) = gpu_worker::model::open(&dir).unwrap();
    let layers = config.num_hidden_layers as u64;
    let times = Arc::new(OpTimes::default());
    let profiled = engine::load_profiled(&dir, &EngineOptions::cpu(), Task::Embed, &times).unwrap();
    let plain = engine::load(&dir, &EngineOptions::cpu(), Task::Embed).unwrap();
    let hidden = config.hidden_size;
    let lengths = [5, 9, 2];
    let ids: Vec<u32> = (0..16).map(|i| 100 + 7 * i).collect();
    let work = Work::Embed {
        dims: vec![hidden; 3],
        normalize: vec![true; 3],
    };
    let passes = 2;
    let start = Instant::now();
    for _ in 0..passes {
        let got = vectors(profiled.compute(&ids, &lengths, &work).unwrap());
        let want = vectors(plain.compute(&ids, &lengths, &work).unwrap());
        assert_eq!(got, want, "profiling changed the vectors");
    }
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;

    let ops = times.snapshot();
    let calls = |op: &str| ops.iter().find(|t| t.op == op).map_or(0, |t| t.calls);
    // Per pass: one layout, gather, first norm, pooling and final residual add; per layer
    // four products (q|k|v, o, gate|up, down), one q/k norm + rope, attention and SwiGLU;
    // two fused residual norms per layer but the last, which has one; the last layer takes
    // the last rows of q|k|v and of the residual.
    let per_pass = [
        ("layout", 1),
        ("embed", 1),
        ("rms_norm", 1),
        ("linear", 4 * layers),
        ("qk_norm_rope", layers),
        ("attention", layers),
        ("silu_mul", layers),
        ("add_rms_norm", 2 * layers - 1),
        ("add", 1),
        ("last_rows", 2),
        ("pool", 1),
    ];
    for (op, n) in per_pass {
        assert_eq!(calls(op), passes * n, "{op}: {ops:?}");
    }
    assert_eq!(ops.len(), per_pass.len(), "{ops:?}");
    let sum: f64 = ops.iter().map(|t| t.ms).sum();
    assert!(ops.iter().all(|t| t.ms >= 0.0));
    // The profiled passes are part of the wall time (the plain ones run beside them).
    assert!(
        sum > 0.0 && sum <= wall_ms,
        "ops sum to {sum} ms in {wall_ms} ms"
    );

    times.clear();
    assert!(times.snapshot().is_empty());
    let table = gpu_worker::profile::table(&ops);
    assert!(table.starts_with("op ") && table.contains("linear") && table.contains("sum"));
}
