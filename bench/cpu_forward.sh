#!/usr/bin/env bash
# Forward-pass throughput on the CPU, ours next to PyTorch + transformers, in one run on one
# machine: a random 0.6B-shaped model, batches of 8 x 128 and 1 x 512 tokens, in f32 and in
# bf16. Prints a markdown table (paste into docs/benchmarks.md) and keeps the JSON lines; with
# bf16, also both sides' rate in GFLOP/s against the ceiling of the matrix path ours runs on,
# measured by `gpu-worker/examples/bf16_peak.rs` (AMX tiles where the CPU has them, else the
# `vdpbf16ps` dot product). Names the CPU model and the matrix path first.
#
#   bench/cpu_forward.sh [MODEL_DIR] [ITERS] [DTYPES]     (DTYPES default: "f32 bf16")
# Needs: ../shared/tools/make-random-qwen3.py (numpy) when MODEL_DIR does not exist, and
# torch + transformers in .venv-bench (python3 -m venv .venv-bench &&
# .venv-bench/bin/pip install torch transformers numpy safetensors).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-/tmp/qwen3-0.6b-random}
# MODEL_DIR is relative to where this is started.
if [[ $model != /* ]]; then model=$PWD/$model; fi
cd "$repo"
iters=${2:-3}
dtypes=${3:-f32 bf16}
python=.venv-bench/bin/python
[[ -x $python ]] || { echo "cpu_forward.sh: create .venv-bench first (see the header)" >&2; exit 1; }
if [[ ! -f "$model/config.json" ]]; then
  $python ../shared/tools/make-random-qwen3.py --preset 0.6b --out "$model" --tokenizer-dir ../shared/fixtures/qwen3-tiny
fi
export CARGO_TARGET_DIR="$repo/target/rel"
cargo build --release -q -p gpu-worker --bin gpu-worker --example bf16_peak
ours=$CARGO_TARGET_DIR/release/gpu-worker
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) threads"
log=$(mktemp)
for dtype in $dtypes; do
  for shape in "8 128" "1 512"; do
    read -r batch seq <<<"$shape"
    # Alternate the systems so drift in machine speed hits both alike.
    $ours bench --model "$model" --backend cpu --dtype "$dtype" --batch "$batch" --seq-len "$seq" --iters "$iters" | tee -a "$log"
    $python bench/torch_forward.py --model "$model" --dtype "$dtype" --batch "$batch" --seq-len "$seq" --iters "$iters" 2>/dev/null | tee -a "$log"
  done
done
echo
echo "| dtype | shape | ours tokens/s | PyTorch tokens/s | ratio |"
echo "|---|---|---|---|---|"
peak=""
[[ " $dtypes " == *" bf16 "* ]] && peak=$($CARGO_TARGET_DIR/release/examples/bf16_peak 2>/dev/null | tail -n 1)
PYTHONPATH=bench $python - "$log" "$model/config.json" "$peak" <<'PY'
import json, sys
from model_flops import attention_flops, linear_flops, load_config
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for ours, torch in zip(rows[0::2], rows[1::2]):
    print(f"| {ours['dtype']} | {ours['batch']} x {ours['seq_len']} | {ours['tokens_per_s']:.1f} | {torch['tokens_per_s']:.1f} | {ours['tokens_per_s'] / torch['tokens_per_s']:.2f}x |")
if sys.argv[3]:
    config = load_config(sys.argv[2])
    peak = json.loads(sys.argv[3])["gflops"]
    peak_line = json.loads(sys.argv[3])
    path = peak_line["path"]
    if path == "amx_bf16":
        peak = peak_line["amx_gflops"]
        print(f"\nmatrix path: {path}; AMX tdpbf16ps ceiling (bf16_peak, all cores): {peak:.0f} GFLOP/s "
              f"(vdpbf16ps: {peak_line['gflops']:.0f})")
    else:
        print(f"\nmatrix path: {path}; vdpbf16ps ceiling (bf16_peak, all cores): {peak:.0f} GFLOP/s")
    for ours, torch in zip(rows[0::2], rows[1::2]):
        if ours["dtype"] != "bf16":
            continue
        flops = linear_flops(config) + attention_flops(config, ours["seq_len"])
        rate = lambda r: r["tokens_per_s"] * flops / 1e9
        print(f"bf16 {ours['batch']} x {ours['seq_len']}: ours {rate(ours):.0f} GFLOP/s "
              f"({100 * rate(ours) / peak:.0f}% of it), PyTorch {rate(torch):.0f} ({100 * rate(torch) / peak:.0f}%)")
PY
