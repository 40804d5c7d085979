//! The padding of CUDA graphs (`cuda::graphs::Bucket`) run on the CPU backend, its exact
//! twin: a batch padded to its bucket gives its real sequences the vectors of the batch
//! alone, in f32 and on every bf16 kernel this CPU runs. The graphs themselves need a GPU
//! (`tests/cuda_graphs.rs`).

mod fixture;

use gpu_worker::cpu::CpuBackend;
use gpu_worker::cpu::linear_bf16::Kernel;
use gpu_worker::cuda::graphs::Bucket;

#[test]
fn padding_sequences_leave_the_real_ones_unchanged() {
    let cases = fixture::case_ids(&fixture::golden());
    let backends = std::iter::once(CpuBackend::F32).chain(
        Kernel::all_supported()
            .into_iter()
            .map(CpuBackend::with_kernel),
    );
    for backend in backends {
        let model = gpu_worker::model::load(&fixture::tiny_dir(), &backend).expect("loads");
        let hidden = model.config().hidden_size;
        let mut checked = 0;
        for group in fixture::random_groups(cases.len(), 6, 5, 23) {
            let (ids, layout) = fixture::pack(&cases, &group);
            let Some(bucket) = Bucket::of(layout.num_rows(), layout.num_seqs(), 512) else {
                continue;
            };
            let dims = vec![hidden; group.len()];
            let alone = model.embed(&backend, &ids, &layout, &dims).unwrap();
            let padded = bucket.pad_layout(&layout).unwrap();
            let padded_dims = vec![hidden; padded.num_seqs()];
            let got = model
                .embed(&backend, &bucket.pad_ids(&ids), &padded, &padded_dims)
                .unwrap();
            assert_eq!(got.len(), bucket.seqs);
            for (i, (want, got)) in alone.iter().zip(&got).enumerate() {
                let diff = fixture::max_abs_diff(want, got);
                assert!(diff <= 1e-6, "{backend:?}, {group:?} seq {i}: diff {diff}");
            }
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} groups had a bucket");
    }
}
