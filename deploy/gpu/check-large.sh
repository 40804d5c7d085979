#!/usr/bin/env bash
# Runs ON a GPU machine, from the bundle deploy/gpu/prepare.sh makes, after check.sh (or
# alone): the 4B and 8B shapes of Qwen3-Embedding, random weights generated on the machine
# itself (8B in bf16 is ~15 GiB, too big to carry). For each shape, in order of what matters
# if time runs short:
#   1. golden-free parity: the CUDA bf16 pass against the CPU's f32 pass on three sequences
#      (tests/cuda_large_shape, cosine >= 0.999; random shapes have no transformers vectors),
#   2. `gpu-worker bench` in bf16 on a throughput batch (32 x 512) and a short query (1 x 16),
#   3. PyTorch + transformers (bf16, SDPA) on the same batches (torch_bench.py),
#   4. the same two rows in fp8 (compute capability 9.0 and newer; refused, and so absent,
#      elsewhere).
# Every step has a timeout; the whole stays under 6 minutes, which may not hold both shapes:
# name one per call (`check-large.sh 8b`). Logs go to $OUT (large.log), the table is printed
# last.
#
# Usage (device tool, from the repository root, carrying gpu-bundle):
#   bash gpu-bundle/check-large.sh [4b] [8b]     (default: both)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/gpu/common.sh
source "$here/common.sh"
log="$out/large.log"
: >"$log"
rows="$out/large.jsonl"
: >"$rows"

# bench DTYPE ARGS...: one `gpu-worker bench` row of $model, tagged with $preset, into large.jsonl.
bench() {
    say "$preset $*"
    local line
    line=$(bench_line "$model" "$@" 2>>"$log")
    [[ $line == \{* ]] && echo "{\"preset\": \"$preset\", ${line#\{}" >>"$rows"
}

presets=("$@")
((${#presets[@]})) || presets=(4b 8b)
for preset in "${presets[@]}"; do
    model=/tmp/qwen3-$preset-random
    if [[ ! -f $model/config.json ]]; then
        say "generating the $preset model"
        timeout "$(cap 150)" python3 "$here/tools/make-random-qwen3.py" --preset "$preset" --out "$model" \
            --max-shard-mb 4000 --tokenizer-dir "$here/fixture" >>"$log" 2>&1 ||
            { echo "$preset: generation failed or timed out (see large.log)"; continue; }
    fi
    say "$preset parity"
    echo "=== $preset parity" >>"$log"
    if QWEN3_LARGE_SHAPE_DIR=$model timeout "$(cap 150)" "$here/tests/cuda_large_shape" --ignored --exact \
        a_large_shape_on_cuda_follows_the_cpu_f32_pass --nocapture >>"$log" 2>&1; then
        parity=pass
    else
        parity=FAIL
    fi
    lowest=$(sed -n '/=== '"$preset"' parity/,$p' "$log" | grep -m 1 -o 'lowest cosine: [0-9.]*')
    grep -q "skipped: no CUDA device" "$log" && parity="FAIL: skipped, no CUDA device"
    echo "$preset parity (cuda bf16 against cpu f32): $parity ${lowest:-}"

    bench bf16 --batch 32 --seq-len 512 --iters 5
    bench bf16 --batch 1 --seq-len 16 --iters 100
    say "$preset torch bench"
    timeout "$(cap 120)" python3 "$here/torch_bench.py" --model "$model" --iters 5 --config 32x512 \
        --config 1x16 2>>"$log" | grep '^{' | sed "s/^{/{\"preset\": \"$preset\", /" >>"$rows"
    bench fp8 --batch 32 --seq-len 512 --iters 5
    bench fp8 --batch 1 --seq-len 16 --iters 100
done

echo "== large shapes ($((SECONDS - started)) s)"
python3 - "$rows" <<'PY'
import json, sys

found = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    side = "torch" if r["backend"].startswith("torch") else r["backend"].removeprefix("cuda-")
    found[(r["preset"], f"{r['batch']}x{r['seq_len']}", side)] = r["tokens_per_s"]

print(f"{'shape':<6} {'workload':<8} {'bf16 tok/s':>11} {'fp8 tok/s':>10} {'torch tok/s':>12} {'bf16/torch':>10}")
for preset in dict.fromkeys(key[0] for key in found):
    for workload in ("32x512", "1x16"):
        bf16, fp8, torch = (found.get((preset, workload, side)) for side in ("bf16", "fp8", "torch"))
        rate = lambda v: f"{v:.0f}" if v else "n/a"  # noqa: E731
        ratio = f"{bf16 / torch:.2f}" if bf16 and torch else "-"
        print(f"{preset:<6} {workload:<8} {rate(bf16):>11} {rate(fp8):>10} {rate(torch):>12} {ratio:>10}")
PY
