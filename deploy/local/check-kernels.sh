#!/usr/bin/env bash
# Compiles every CUDA kernel (gpu-worker/kernels/*.cu) with NVRTC for sm_80 (A100), sm_90
# (H100/H200) and sm_90a (Hopper with its architecture-specific features) on a machine without
# a GPU, failing on any error or warning or on a register spill in a kernel the model runs at
# production sizes, and prints ptxas' register and spill report. NVRTC comes from the pinned
# pip wheel in .venv-cuda (created on first use). The kernels include no CUDA header, so no
# include path is needed.
#
# Usage: deploy/local/check-kernels.sh   (from anywhere; about a minute on a cold build)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

venv=.venv-cuda
# 13.0.x: a newer NVRTC emits PTX that the driver-580 (CUDA 13.0) GPU machines may reject.
nvrtc_wheel="nvidia-cuda-nvrtc==13.0.88"
if ! compgen -G "$venv/lib/python3.*/site-packages/nvidia/cu13/lib/libnvrtc.so.13" >/dev/null; then
    echo "installing $nvrtc_wheel into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$nvrtc_wheel"
fi
cu13=$(compgen -G "$venv/lib/python3.*/site-packages/nvidia/cu13" | head -n 1)
export LD_LIBRARY_PATH="$root/$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Without NVRTC the test would skip; here that is a failure.
export QWEN3_REQUIRE_NVRTC=1
cargo test -p gpu-worker --test cuda_kernels_compile -- --nocapture --test-threads=1
