//! The CUDA backend against its CPU twins: every op on fresh seeded random inputs (sizes that
//! are not multiples of the block sizes, several sequence lengths, last-row-only attention,
//! head widths 2 to 256). The whole model is tested in `cuda_model.rs`.
//!
//! Inputs of bf16 tensors are rounded to bf16 first, so both backends see the same values;
//! results are compared with `|got - want| <= atol + rtol * |want|` and the first mismatches
//! are printed. Without a CUDA device every test prints `skipped: no CUDA device` and returns.

mod cuda_support;

use cuda_support::{chunked_mlp_gpu, fp8_gpu, fused_q_norm_rope_gpu, gpu};
use gpu_worker::cpu::{CpuBackend, CpuTensor};
use gpu_worker::cuda::{ActDtype, CudaBackend, CudaTensor};
use gpu_worker::ops::{AttentionShape, BatchLayout, Dtype, Ops, QkNorms, Queries, TensorView};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Comparison tolerance: `atol + rtol * |want|`.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    atol: f32,
    rtol: f32,
}

/// One bf16 rounding of the output (relative 2^-9) plus f32 reordering, with margin.
const BF16: Tolerance = Tolerance {
    atol: 1e-2,
    rtol: 1e-2,
};
/// f32 arithmetic in another order.
const F32: Tolerance = Tolerance {
    atol: 1e-5,
    rtol: 1e-4,
};
/// The same f32 operations: bit-identical.
const EXACT: Tolerance = Tolerance {
    atol: 0.0,
    rtol: 0.0,
};

/// Fails, printing the first mismatches, unless every value is within `tol` (NaN never is).
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tolerance) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut max_error = 0.0f32;
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g - w).abs();
        if error.is_nan() || error > tol.atol + tol.rtol * w.abs() {
            bad.push(i);
        }
        if error > max_error {
            max_error = error;
        }
    }
    eprintln!(
        "{what}: max abs error {max_error:.3e} over {} values",
        got.len()
    );
    if !bad.is_empty() {
        for &i in bad.iter().take(10) {
            eprintln!("  {what}[{i}]: got {} want {}", got[i], want[i]);
        }
        panic!(
            "{what}: {} of {} values outside {tol:?}",
            bad.len(),
            got.len()
        );
    }
}

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn round_bf16(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| bf16::from_f32(v).to_f32())
        .collect()
}

/// A weight stored as bf16 bytes, as checkpoints hold it.
struct Weight {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Weight {
    fn new(shape: &[usize], values: &[f32]) -> Self {
        Self {
            shape: shape.to_vec(),
            bytes: values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Norm weights near 1, as in the fixture.
    fn norm(rng: &mut StdRng, n: usize) -> Self {
        let values: Vec<f32> = uniform(rng, n, 0.2).into_iter().map(|v| 1.0 + v).collect();
        Self::new(&[n], &values)
    }

    fn view(&self) -> TensorView<'_> {
        TensorView {
            name: "test.weight".into(),
            dtype: Dtype::Bf16,
            shape: self.shape.clone(),
            data: &self.bytes,
        }
    }
}

/// The same host matrix on both backends.
fn both(
    gpu: &CudaBackend,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    dtype: ActDtype,
) -> (CpuTensor, CudaTensor) {
    let values = match dtype {
        ActDtype::Bf16 => round_bf16(values),
        ActDtype::F32 => values,
    };
    let device = gpu.upload_tensor(rows, cols, &values, dtype).unwrap();
    (CpuTensor::new(rows, cols, values).unwrap(), device)
}

/// Random sequence lengths, including ones at and around the attention tile of 64 rows.
const LENGTHS: &[usize] = &[1, 3, 64, 65, 130, 17];

// ---------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------

#[test]
fn embed_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(1);
    for (vocab, hidden, rows) in [(1000, 32, 1), (1000, 100, 7), (5000, 1024, 300)] {
        let table = Weight::new(&[vocab, hidden], &uniform(&mut rng, vocab * hidden, 1.0));
        let mut ids: Vec<u32> = (0..rows)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        ids[0] = vocab as u32 - 1;
        let want = CpuBackend::F32
            .embed(&CpuBackend::F32.table(table.view()).unwrap(), &ids)
            .unwrap();
        let device_table = gpu.table(table.view()).unwrap();
        let got = gpu.embed(&device_table, &ids).unwrap();
        assert_eq!(got.dtype(), ActDtype::F32);
        let what = format!("embed {rows}x{hidden}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, EXACT);
        assert!(gpu.embed(&device_table, &[vocab as u32]).is_err());
    }
}

/// Shapes of the row-wise ops `rms_norm`, `add_rms_norm` and `add`, covering both of their
/// kernels (see `src/cuda/rms_norm.rs`): widths that are a multiple of 8 take the
/// one-warp-per-row vector kernels (8 = one busy lane, 1000 = lanes with unequal shares,
/// 1024 = the real hidden size), the others the scalar kernels (36, 100); row counts that are
/// not a multiple of the 8 rows of a vector block.
const ROW_SHAPES: &[(usize, usize)] = &[
    (1, 32),
    (3, 8),
    (9, 36),
    (3, 100),
    (37, 1024),
    (5, 1000),
    (13, 1024),
];

#[test]
fn rms_norm_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(2);
    for (&(rows, cols), scale) in ROW_SHAPES.iter().zip([1.0, 0.05, 30.0].into_iter().cycle()) {
        let weight = Weight::norm(&mut rng, cols);
        let (x_cpu, x_gpu) = both(
            &gpu,
            rows,
            cols,
            uniform(&mut rng, rows * cols, scale),
            ActDtype::F32,
        );
        let want = CpuBackend::F32
            .rms_norm(
                &x_cpu,
                &CpuBackend::F32.vector(weight.view()).unwrap(),
                1e-6,
            )
            .unwrap();
        let w_gpu = gpu.vector(weight.view()).unwrap();
        let got = gpu
            .to_host(&gpu.rms_norm(&x_gpu, &w_gpu, 1e-6).unwrap())
            .unwrap();
        let what = format!("rms_norm {rows}x{cols}");
        assert_close(&what, &got, &want.data, BF16);

        // The last row alone (the last, partly filled block of a batch) is bit-identical.
        let last_row = &x_cpu.data[(rows - 1) * cols..];
        let x_last = gpu.upload_tensor(1, cols, last_row, ActDtype::F32).unwrap();
        let alone = gpu
            .to_host(&gpu.rms_norm(&x_last, &w_gpu, 1e-6).unwrap())
            .unwrap();
        let what = format!("rms_norm {rows}x{cols}, last row alone");
        assert_close(&what, &alone, &got[(rows - 1) * cols..], EXACT);
    }
}

#[test]
fn add_rms_norm_and_add_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for &(rows, cols) in ROW_SHAPES {
        let weight = Weight::norm(&mut rng, cols);
        let residual = uniform(&mut rng, rows * cols, 0.1);
        let delta = uniform(&mut rng, rows * cols, 0.1);
        let (mut res_cpu, mut res_gpu) = both(&gpu, rows, cols, residual, ActDtype::F32);
        let (delta_cpu, delta_gpu) = both(&gpu, rows, cols, delta, ActDtype::Bf16);
        let (w_cpu, w_gpu) = (
            CpuBackend::F32.vector(weight.view()).unwrap(),
            gpu.vector(weight.view()).unwrap(),
        );
        let want = CpuBackend::F32
            .add_rms_norm(&mut res_cpu, &delta_cpu, &w_cpu, 1e-6)
            .unwrap();
        let got = gpu
            .add_rms_norm(&mut res_gpu, &delta_gpu, &w_gpu, 1e-6)
            .unwrap();
        let what = format!("add_rms_norm {rows}x{cols}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, BF16);
        let what = format!("add_rms_norm residual {rows}x{cols}");
        assert_close(&what, &gpu.to_host(&res_gpu).unwrap(), &res_cpu.data, EXACT);

        CpuBackend::F32.add(&mut res_cpu, &delta_cpu).unwrap();
        gpu.add(&mut res_gpu, &delta_gpu).unwrap();
        let what = format!("add {rows}x{cols}");
        assert_close(&what, &gpu.to_host(&res_gpu).unwrap(), &res_cpu.data, EXACT);
    }
}

#[test]
fn linear_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(4);
    for (rows, k, n) in [(1, 32, 64), (5, 96, 40), (130, 1000, 300), (67, 1024, 4096)] {
        let weights = [
            Weight::new(&[n / 2, k], &uniform(&mut rng, n / 2 * k, 0.05)),
            Weight::new(&[n - n / 2, k], &uniform(&mut rng, (n - n / 2) * k, 0.05)),
        ];
        let views: Vec<TensorView<'_>> = weights.iter().map(Weight::view).collect();
        let (x_cpu, x_gpu) = both(
            &gpu,
            rows,
            k,
            uniform(&mut rng, rows * k, 1.0),
            ActDtype::Bf16,
        );
        let want = CpuBackend::F32
            .linear(&x_cpu, &CpuBackend::F32.matrix(&views).unwrap())
            .unwrap();
        let got = gpu.linear(&x_gpu, &gpu.matrix(&views).unwrap()).unwrap();
        let what = format!("linear {rows}x{k} @ ({n}x{k})^T");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, BF16);
    }
}

#[test]
fn an_mlp_in_token_chunks_matches_the_cpu_and_the_whole_batch() {
    let (Some(gpu), Some(chunked)) = (gpu(), chunked_mlp_gpu(7)) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(12);
    // 30 rows in chunks of 7, 7, 7, 7 and 2; a width of 40 takes silu_mul's vector kernel,
    // 36 its scalar one.
    for (rows, hidden, inner) in [(30, 96, 40), (9, 64, 36), (5, 64, 40)] {
        let gate_up = [
            Weight::new(&[inner, hidden], &uniform(&mut rng, inner * hidden, 0.1)),
            Weight::new(&[inner, hidden], &uniform(&mut rng, inner * hidden, 0.1)),
        ];
        let down = Weight::new(&[hidden, inner], &uniform(&mut rng, hidden * inner, 0.1));
        let gate_up: Vec<TensorView<'_>> = gate_up.iter().map(Weight::view).collect();
        let values = uniform(&mut rng, rows * hidden, 1.0);
        let (x_cpu, x_gpu) = both(&gpu, rows, hidden, values.clone(), ActDtype::Bf16);
        let cpu = &CpuBackend::F32;
        let want = cpu
            .mlp(
                &x_cpu,
                &cpu.matrix(&gate_up).unwrap(),
                &cpu.matrix(&[down.view()]).unwrap(),
            )
            .unwrap();
        // The MLP of `x` on a CUDA backend, back on the host.
        let mlp = |gpu: &CudaBackend, x: &CudaTensor| {
            let gate_up = gpu.matrix(&gate_up).unwrap();
            let out = gpu.mlp(x, &gate_up, &gpu.matrix(&[down.view()]).unwrap());
            gpu.to_host(&out.unwrap()).unwrap()
        };
        let whole = mlp(&gpu, &x_gpu);
        let x_chunked = chunked
            .upload_tensor(rows, hidden, &round_bf16(values), ActDtype::Bf16)
            .unwrap();
        let got = mlp(&chunked, &x_chunked);
        let what = format!("mlp {rows}x{hidden}, inner {inner}, chunks of 7");
        assert_close(&what, &got, &want.data, BF16);
        assert_close(
            &format!("{what} against the whole batch"),
            &got,
            &whole,
            BF16,
        );
    }
}

#[test]
fn fp8_linear_matches_its_cpu_twin() {
    use gpu_worker::cpu::fp8_twin::Fp8Twin;
    let Some(gpu) = fp8_gpu() else { return };
    let mut rng = StdRng::seed_from_u64(10);
    // FP8 holds matrices with both sides multiples of 16; (17 x 32) stays bf16 on both.
    for (rows, k, n) in [
        (1, 32, 64),
        (5, 96, 48),
        (130, 1024, 3072),
        (67, 3072, 1024),
        (3, 32, 17),
    ] {
        let weight = Weight::new(&[n, k], &uniform(&mut rng, n * k, 0.05));
        let views = [weight.view()];
        let (x_cpu, x_gpu) = both(
            &gpu,
            rows,
            k,
            uniform(&mut rng, rows * k, 1.0),
            ActDtype::Bf16,
        );
        let matrix = gpu.matrix(&views).unwrap();
        assert_eq!(matrix.is_fp8(), gpu_worker::fp8::fits(n, k), "{n}x{k}");
        let want = Fp8Twin
            .linear(&x_cpu, &Fp8Twin.matrix(&views).unwrap())
            .unwrap();
        let got = gpu.to_host(&gpu.linear(&x_gpu, &matrix).unwrap()).unwrap();
        let what = format!("fp8 linear {rows}x{k} @ ({n}x{k})^T");
        assert_close(&what, &got, &want.data, BF16);
        // Again, on the algorithm chosen the first time: the same values.
        let again = gpu.to_host(&gpu.linear(&x_gpu, &matrix).unwrap()).unwrap();
        assert_eq!(again, got, "{what}, second product");
    }
}

#[test]
fn silu_mul_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(5);
    // Widths that are not a multiple of 8 take the one-block-per-row kernel, the others the
    // one-warp-per-row one.
    for (rows, n) in [(1, 1), (33, 50), (9, 24), (7, 3072), (17, 3080)] {
        let (x_cpu, x_gpu) = both(
            &gpu,
            rows,
            2 * n,
            uniform(&mut rng, rows * 2 * n, 8.0),
            ActDtype::Bf16,
        );
        let want = CpuBackend::F32.silu_mul(&x_cpu).unwrap();
        let got = gpu.silu_mul(&x_gpu).unwrap();
        let what = format!("silu_mul {rows}x{n}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, BF16);
    }
}

#[test]
fn fp8_row_quantization_matches_cpu_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(9);
    for (rows, cols, range) in [(1, 1, 1.0), (5, 1024, 8.0), (33, 3072, 1e-3), (3, 50, 6e4)] {
        let mut values = round_bf16(uniform(&mut rng, rows * cols, range));
        // A zero row, and values in E4M3's subnormal range after scaling.
        values[..cols].fill(0.0);
        if cols > 1 {
            values[cols * (rows - 1)] = bf16::from_f32(range * 1e-4).to_f32();
        }
        let x = gpu
            .upload_tensor(rows, cols, &values, ActDtype::Bf16)
            .unwrap();
        let got = gpu.quantize_fp8_rows(&x).unwrap().to_host(&gpu).unwrap();
        let want = gpu_worker::fp8::Fp8Rows::quantize(&values, cols);
        assert_eq!(got, want, "fp8 rows {rows}x{cols} in +-{range}");
    }
}

/// A fused q|k|v tensor of random bf16 values for `lengths`, on both backends.
fn random_qkv(
    gpu: &CudaBackend,
    rng: &mut StdRng,
    lengths: &[usize],
    shape: AttentionShape,
) -> (BatchLayout, CpuTensor, CudaTensor) {
    let layout = BatchLayout::from_lengths(lengths).unwrap();
    let rows = layout.num_rows();
    let width = shape.qkv_width();
    let (cpu, device) = both(
        gpu,
        rows,
        width,
        uniform(rng, rows * width, 1.0),
        ActDtype::Bf16,
    );
    (layout, cpu, device)
}

fn shape(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    }
}

/// The q and k head-norm weights on `backend`.
fn norm_weights<B: Ops>(backend: &B, q_norm: &Weight, k_norm: &Weight) -> (B::Vector, B::Vector) {
    (
        backend.vector(q_norm.view()).unwrap(),
        backend.vector(k_norm.view()).unwrap(),
    )
}

/// The q/k norms and rotary constants of the head-norm tests (Qwen3's epsilon and theta).
fn qk_norms<V>((q_norm, k_norm): &(V, V)) -> QkNorms<'_, V> {
    QkNorms {
        q_norm,
        k_norm,
        eps: 1e-6,
        rope_theta: 1e6,
    }
}

#[test]
fn qk_norm_rope_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(6);
    let cases: [(AttentionShape, &[usize]); 5] = [
        (shape(4, 2, 16), LENGTHS),
        (shape(16, 8, 128), &[1, 5, 64, 130, 3000]),
        (shape(3, 1, 40), LENGTHS),
        (shape(2, 1, 256), &[70, 2]),
        (shape(2, 2, 2), &[9]),
    ];
    for (shape, lengths) in cases {
        let (layout, mut qkv_cpu, mut qkv_gpu) = random_qkv(&gpu, &mut rng, lengths, shape);
        let q_norm = Weight::norm(&mut rng, shape.head_dim);
        let k_norm = Weight::norm(&mut rng, shape.head_dim);
        let cpu_weights = norm_weights(&CpuBackend::F32, &q_norm, &k_norm);
        let cpu_norms = qk_norms(&cpu_weights);
        CpuBackend::F32
            .qk_norm_rope(
                &mut qkv_cpu,
                &cpu_norms,
                &CpuBackend::F32.layout(&layout).unwrap(),
                shape,
            )
            .unwrap();
        let gpu_weights = norm_weights(&gpu, &q_norm, &k_norm);
        let gpu_norms = qk_norms(&gpu_weights);
        gpu.qk_norm_rope(
            &mut qkv_gpu,
            &gpu_norms,
            &gpu.layout(&layout).unwrap(),
            shape,
        )
        .unwrap();
        let what = format!("qk_norm_rope {shape:?} lengths {lengths:?}");
        assert_close(&what, &gpu.to_host(&qkv_gpu).unwrap(), &qkv_cpu.data, BF16);
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    let cases: [(AttentionShape, &[usize]); 7] = [
        // The fixture's geometry and the real one (Qwen3-Embedding-0.6B).
        (shape(4, 2, 16), LENGTHS),
        (shape(16, 8, 128), &[1, 3, 64, 65, 130, 700]),
        // No grouping; 16-byte loads at head_dim 64.
        (shape(8, 8, 64), &[200, 1, 63]),
        // Head widths padded inside the kernel: 40 -> 64 (16-byte loads), 20 -> 32 (pairs).
        (shape(4, 2, 40), LENGTHS),
        (shape(6, 3, 20), LENGTHS),
        // The widest head, with 32-key tiles; and 96 -> 128.
        (shape(2, 1, 256), &[1, 31, 33, 100]),
        (shape(4, 1, 96), &[129, 2]),
    ];
    for (shape, lengths) in cases {
        let (layout, qkv_cpu, qkv_gpu) = random_qkv(&gpu, &mut rng, lengths, shape);
        let (cpu_layout, gpu_layout) = (
            CpuBackend::F32.layout(&layout).unwrap(),
            gpu.layout(&layout).unwrap(),
        );
        let want = CpuBackend::F32
            .attention(&qkv_cpu, &qkv_cpu, &cpu_layout, Queries::All, shape)
            .unwrap();
        let got = gpu
            .attention(&qkv_gpu, &qkv_gpu, &gpu_layout, Queries::All, shape)
            .unwrap();
        let what = format!("attention {shape:?} lengths {lengths:?}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, BF16);

        let q_cpu = CpuBackend::F32.last_rows(&qkv_cpu, &cpu_layout).unwrap();
        let q_gpu = gpu.last_rows(&qkv_gpu, &gpu_layout).unwrap();
        let want = CpuBackend::F32
            .attention(&q_cpu, &qkv_cpu, &cpu_layout, Queries::LastOnly, shape)
            .unwrap();
        let got = gpu
            .attention(&q_gpu, &qkv_gpu, &gpu_layout, Queries::LastOnly, shape)
            .unwrap();
        let what = format!("attention last rows {shape:?} lengths {lengths:?}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, BF16);
    }
}

#[test]
fn q_norms_in_the_attention_kernel_give_the_unfused_bits() {
    let (Some(gpu), Some(fused)) = (gpu(), fused_q_norm_rope_gpu()) else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(15);
    let cases: [(AttentionShape, &[usize]); 5] = [
        (shape(4, 2, 16), LENGTHS),
        (shape(16, 8, 128), &[1, 3, 64, 65, 130, 700]),
        // Padded head widths: 40 -> 64, 96 -> 128; and the widest head, 32-key tiles.
        (shape(3, 1, 40), LENGTHS),
        (shape(4, 1, 96), &[129, 2]),
        (shape(2, 1, 256), &[1, 31, 33, 100]),
    ];
    let cpu = &CpuBackend::F32;
    for (shape, lengths) in cases {
        let (layout, qkv_cpu, qkv_gpu) = random_qkv(&gpu, &mut rng, lengths, shape);
        let qkv_host = gpu.to_host(&qkv_gpu).unwrap();
        let q_norm = Weight::norm(&mut rng, shape.head_dim);
        let k_norm = Weight::norm(&mut rng, shape.head_dim);
        let cpu_weights = norm_weights(cpu, &q_norm, &k_norm);
        let cpu_norms = qk_norms(&cpu_weights);
        let cpu_layout = cpu.layout(&layout).unwrap();
        // The self-attention of the same q|k|v on `backend`, back on the host.
        let run = |backend: &CudaBackend, queries: Queries| {
            let weights = norm_weights(backend, &q_norm, &k_norm);
            let norms = qk_norms(&weights);
            let qkv = backend
                .upload_tensor(
                    layout.num_rows(),
                    shape.qkv_width(),
                    &qkv_host,
                    ActDtype::Bf16,
                )
                .unwrap();
            let device_layout = backend.layout(&layout).unwrap();
            let out = backend
                .self_attention(qkv, &norms, &device_layout, queries, shape)
                .unwrap();
            backend.to_host(&out).unwrap()
        };
        for queries in [Queries::All, Queries::LastOnly] {
            let want = cpu
                .self_attention(qkv_cpu.clone(), &cpu_norms, &cpu_layout, queries, shape)
                .unwrap();
            let (unfused, got) = (run(&gpu, queries), run(&fused, queries));
            let what = format!("self-attention {queries:?} {shape:?} lengths {lengths:?}");
            assert_close(&what, &got, &want.data, BF16);
            // norm_rope_head is one function for both kernels: the same arithmetic on the
            // same values, so the same bits.
            let differ = got.iter().zip(&unfused).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ, 0,
                "{what}: {differ} values differ from the unfused kernels"
            );
        }
    }
}

#[test]
fn last_rows_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(8);
    let layout = BatchLayout::from_lengths(LENGTHS).unwrap();
    let (cpu_layout, gpu_layout) = (
        CpuBackend::F32.layout(&layout).unwrap(),
        gpu.layout(&layout).unwrap(),
    );
    for dtype in [ActDtype::F32, ActDtype::Bf16] {
        let cols = 100;
        let rows = layout.num_rows();
        let (x_cpu, x_gpu) = both(&gpu, rows, cols, uniform(&mut rng, rows * cols, 1.0), dtype);
        let want = CpuBackend::F32.last_rows(&x_cpu, &cpu_layout).unwrap();
        let got = gpu.last_rows(&x_gpu, &gpu_layout).unwrap();
        assert_eq!(got.dtype(), dtype);
        let what = format!("last_rows {dtype:?}");
        assert_close(&what, &gpu.to_host(&got).unwrap(), &want.data, EXACT);
    }
}

#[test]
fn pool_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(9);
    for cols in [32, 100, 1024] {
        let rows = 6;
        let weight = Weight::norm(&mut rng, cols);
        let dims: Vec<usize> = [1, cols, cols / 2, 16.min(cols), 3, cols - 1].to_vec();
        // Mixed in one pass, as merged batches are (`normalize: false` requests).
        let normalize = [true, false, true, false, false, true];
        let (x_cpu, x_gpu) = both(
            &gpu,
            rows,
            cols,
            uniform(&mut rng, rows * cols, 0.1),
            ActDtype::F32,
        );
        let want = CpuBackend::F32
            .pool(
                &x_cpu,
                &CpuBackend::F32.vector(weight.view()).unwrap(),
                1e-6,
                &dims,
                &normalize,
            )
            .unwrap();
        let got = gpu
            .pool(
                &x_gpu,
                &gpu.vector(weight.view()).unwrap(),
                1e-6,
                &dims,
                &normalize,
            )
            .unwrap();
        for (row, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("pool {cols} row {row}"), g, w, F32);
        }
    }
}

#[test]
fn bad_operands_are_errors_not_panics() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(10);
    let weight = gpu.vector(Weight::norm(&mut rng, 8).view()).unwrap();
    let x_bf16 = gpu.upload_tensor(2, 8, &[0.5; 16], ActDtype::Bf16).unwrap();
    let mut x_f32 = gpu.upload_tensor(2, 8, &[0.5; 16], ActDtype::F32).unwrap();
    assert!(
        gpu.rms_norm(&x_bf16, &weight, 1e-6).is_err(),
        "bf16 residual"
    );
    assert!(gpu.silu_mul(&x_f32).is_err(), "f32 gate|up");
    let f32_delta = gpu.upload_tensor(2, 8, &[0.5; 16], ActDtype::F32).unwrap();
    assert!(gpu.add(&mut x_f32, &f32_delta).is_err(), "f32 delta");
    let wide = gpu
        .upload_tensor(1, 16, &[0.5; 16], ActDtype::Bf16)
        .unwrap();
    assert!(gpu.add(&mut x_f32, &wide).is_err(), "shapes differ");
    let layout = gpu
        .layout(&BatchLayout::from_lengths(&[2]).unwrap())
        .unwrap();
    let odd = shape(2, 1, 3);
    let qkv = gpu
        .upload_tensor(2, 12, &[0.5; 24], ActDtype::Bf16)
        .unwrap();
    assert!(
        gpu.attention(&qkv, &qkv, &layout, Queries::All, odd)
            .is_err(),
        "odd head_dim"
    );
    assert!(
        gpu.upload_tensor(0, 8, &[], ActDtype::F32).is_err(),
        "empty"
    );
}
