//! A large model shape on the CUDA backend against the CPU's f32 pass: golden-free parity for
//! shapes no fixture has (the 4B and 8B of Qwen3-Embedding with random weights, generated on
//! the GPU machine by `make-random-qwen3.py`; transformers has no vectors for them, the f32
//! pass is the reference). `deploy/gpu/check-large.sh` runs it with the model directory in
//! `$QWEN3_LARGE_SHAPE_DIR`; ignored by default (the CPU pass of an 8B model wants a large
//! machine). Without a CUDA device it prints `skipped: no CUDA device` and returns.

mod cuda_support;
mod fixture;

use std::path::{Path, PathBuf};

use cuda_support::gpu;
use gpu_worker::cpu::CpuBackend;
use gpu_worker::ops::{BatchLayout, Ops};

/// bf16 products keep a vector within this cosine of the f32 pass's (the bound; the
/// 0.6B shape with random weights gives 0.99998 on the CPU's bf16 pass).
const MIN_COSINE: f32 = 0.999;

/// Embeds `ids` (one sequence each, packed into one batch) with the model in `dir` loaded on
/// `backend`.
fn vectors<B: Ops>(backend: &B, dir: &Path, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let model = gpu_worker::model::load(dir, backend).expect("the model loads");
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let layout = BatchLayout::from_lengths(&lengths).unwrap();
    let packed: Vec<u32> = ids.concat();
    let dims = vec![model.config().hidden_size; ids.len()];
    model
        .embed(backend, &packed, &layout, &dims)
        .expect("the batch runs")
}

#[test]
#[ignore = "needs a model directory in $QWEN3_LARGE_SHAPE_DIR and a CUDA device"]
fn a_large_shape_on_cuda_follows_the_cpu_f32_pass() {
    let Some(dir) = std::env::var_os("QWEN3_LARGE_SHAPE_DIR") else {
        panic!("set QWEN3_LARGE_SHAPE_DIR to a model directory");
    };
    let Some(gpu) = gpu() else { return };
    let dir = PathBuf::from(dir);
    let (config, _) = gpu_worker::model::open(&dir).expect("the model opens");
    let ids = fixture::random_sequences(config.vocab_size, &[5, 33, 128], 4);
    let on_gpu = vectors(&gpu, &dir, &ids);
    drop(gpu);
    let on_cpu = vectors(&CpuBackend::F32, &dir, &ids);
    let mut worst = 1.0f32;
    for (i, sequence) in ids.iter().enumerate() {
        let cosine = fixture::cosine(&on_gpu[i], &on_cpu[i]);
        println!(
            "{} layers, hidden {}: {} tokens: cuda bf16 to cpu f32 cosine {cosine:.6}",
            config.num_hidden_layers,
            config.hidden_size,
            sequence.len()
        );
        worst = worst.min(cosine);
    }
    println!("lowest cosine: {worst:.6}");
    assert!(
        worst >= MIN_COSINE,
        "cuda bf16 to cpu f32 cosine {worst:.6}"
    );
}
