#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine (Rust toolchain present):
# installs nats-server and NVRTC into the repository, compiles every CUDA kernel with NVRTC
# (no GPU needed), then formatting, lints and the whole test suite. GPU tests print
# "skipped: no CUDA device" where there is none.
set -euo pipefail
cd "$(dirname "$0")/../.."
# A one-off build gains nothing from incremental caches, which would add gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

deploy/local/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets (their own workspace, run by hand with cargo fuzz) must keep compiling.
cargo check --manifest-path fuzz/Cargo.toml --locked
deploy/local/check-kernels.sh
# The fault tests run the real binaries as child processes; cargo test does not build them.
cargo build --workspace --bins --locked
cargo test --workspace --locked
# The GPU tests again, uncaptured, so their "skipped: no CUDA device" lines show where there is
# no GPU (cargo hides the output of passing tests).
cargo test -p gpu-worker --locked --test cuda_parity --test cuda_model --test cuda_graphs -- --nocapture 2>&1 | grep -E "skipped|test result"
