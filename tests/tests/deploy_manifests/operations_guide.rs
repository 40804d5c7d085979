//! The operations guide (docs/operations.md) covers the layouts, the tuning settings, the
//! images and every gateway metric.

use super::{gateway_metrics, read};

#[test]
fn operations_guide_covers_layouts_metrics_and_images() {
    let guide = read("docs/operations.md");
    for needle in [
        "compose.yaml",
        "compose.multi-gpu.yaml",
        "compose.high-load.yaml",
        "gpu_memory_fraction",
        "max_batch_tokens",
        "request_timeout_s",
        "deploy/containers/cpu.Dockerfile",
        "deploy/containers/cuda.Dockerfile",
        ".dockerignore",
        "--device",
    ] {
        assert!(
            guide.contains(needle),
            "docs/operations.md does not mention {needle}"
        );
    }
    for metric in gateway_metrics().keys() {
        assert!(
            guide.contains(metric.as_str()),
            "docs/operations.md does not explain {metric}"
        );
    }
}
