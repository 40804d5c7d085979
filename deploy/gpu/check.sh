#!/usr/bin/env bash
# Runs ON a GPU machine, from the bundle deploy/gpu/prepare.sh makes (copied there as
# gpu-bundle/check.sh):
#   1. every kernel compiles with the machine's NVRTC,
#   2. the CUDA tests: each kernel against its CPU twin (cuda_parity), the model on the
#      qwen3-tiny fixture against transformers' golden vectors, batch invariance, memory limits,
#      and the tiny reranker against transformers' scores (cuda_model),
#   3. throughput of a random Qwen3-Embedding-0.6B: `gpu-worker bench --backend cuda` against
#      PyTorch + transformers (bf16, SDPA) on the same workloads (torch_bench.py), and the
#      linear layers' rate against a large cuBLAS matrix product on the same card.
# Took 83-98 s on an H100 (every step has a timeout; the whole stays under 5.5 minutes). Full
# logs go to $OUT (7 files); a short table is printed last.
#
# Usage (device tool, from the repository root, carrying gpu-bundle):  bash gpu-bundle/check.sh
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
started=$SECONDS
say() { echo "[$((SECONDS - started))s] $*" >&2; }
# A step's timeout, cut so that the whole script ends within 5.5 minutes.
cap() {
    local t=$1 left=$((330 - (SECONDS - started)))
    ((left < t)) && t=$left
    ((t < 1)) && t=1
    echo "$t"
}
note() { echo "$*" | tee -a "$summary"; }

# --- CUDA libraries: NVRTC and cuBLAS from Python's nvidia packages, the driver's folder ----
libdirs=$(python3 - <<'PY'
import glob, os, sys
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
roots += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
found = {}
for name in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libcublas.so.13", "libcublasLt.so.13"):
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "**", name), recursive=True))
        if hits:
            found[name] = os.path.dirname(hits[0])
            break
    else:
        print(f"missing {name}", file=sys.stderr)
print(":".join(dict.fromkeys(found.values())))
PY
)
for driver_dir in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [[ -e $driver_dir/libcuda.so.1 ]] && libdirs="$libdirs:$driver_dir" && break
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export QWEN3_TINY_DIR="$here/fixture" QWEN3_TINY_RERANKER_DIR="$here/reranker"
export RUST_BACKTRACE=1

note "== $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# --- 1. Kernels compile with this machine's NVRTC (no warnings) -----------------------------
say "kernel compile check"
if QWEN3_REQUIRE_NVRTC=1 timeout "$(cap 90)" "$here/tests/cuda_kernels_compile" --test-threads=1 --nocapture \
    >"$out/kernels.log" 2>&1; then
    kernels=pass
else
    kernels=FAIL
fi
note "kernels (NVRTC, sm_80 + sm_90): $kernels"

# --- 2. CUDA tests, each in its own process: a sticky device error (an illegal address, say)
#        poisons the whole process's context, and must not hide the tests after it ---------------
parity=pass
for suite in cuda_parity cuda_model; do
    say "$suite"
    log="$out/$suite.log"
    : >"$log"
    passed=0
    failed=()
    for test in $("$here/tests/$suite" --list 2>>"$log" | sed -n 's/: test$//p'); do
        echo "=== $test" >>"$log"
        if timeout "$(cap 120)" "$here/tests/$suite" --exact "$test" --nocapture >>"$log" 2>&1; then
            passed=$((passed + 1))
        else
            failed+=("$test")
        fi
    done
    if grep -q "skipped: no CUDA device" "$log"; then
        result="FAIL: skipped, no CUDA device found (see LD_LIBRARY_PATH)"
    elif ((${#failed[@]} == 0 && passed > 0)); then
        result="pass ($passed tests)"
    else
        result="FAIL: $passed passed, ${#failed[@]} failed: ${failed[*]}"
    fi
    [[ $result == pass* ]] || parity=FAIL
    note "$suite: $result"
    grep -E "panicked|lowest cosine|largest|drifts|outside" "$log" | head -n 15 | sed 's/^/  /' |
        tee -a "$summary"
done

# --- 3. Throughput on a random 0.6B model ------------------------------------------------------
# Workloads: one fixed batch (32 x 512, no padding either side) and the mixed workload of the
# issue (4,096 sequences of 16 to 512 tokens): ours packs them in arrival order into batches of at
# most 32,768 tokens (the production profile's budget); PyTorch runs them as sentence-transformers
# does (sorted longest first, 32 a batch, padded to the longest).
model=/tmp/qwen3-0.6b-random
mixed=4096:16:512
budget=32768
workloads=("32x512" "mixed")
declare -A ours theirs
tokens_per_s() { python3 -c 'import json, sys; print(round(json.loads(sys.argv[1])["tokens_per_s"]))' "$1" 2>/dev/null || echo error; }
say "generating the 0.6B model"
if timeout "$(cap 120)" python3 "$here/tools/make-random-qwen3.py" --out "$model" \
    >"$out/gen.log" 2>&1; then
    if [[ -x "$here/bin/gpu-worker" ]]; then
        : >"$out/bench.log"
        bench() {
            say "gpu-worker bench $*"
            local line
            line=$(timeout "$(cap 90)" "$here/bin/gpu-worker" bench --model "$model" --backend cuda --dtype bf16 \
                "$@" 2>>"$out/bench.log" | tail -n 1)
            echo "$line" >>"$out/bench.log"
            tokens_per_s "$line"
        }
        ours[32x512]=$(bench --batch 32 --seq-len 512 --iters 10)
        IFS=: read -r count low high <<<"$mixed"
        ours[mixed]=$(bench --sequences "$count" --min-len "$low" --seq-len "$high" --batch "$count" \
            --batch-tokens "$budget" --iters 2)
    else
        note "bench: no gpu-worker binary in the bundle"
    fi
    say "torch bench"
    timeout "$(cap 150)" python3 "$here/torch_bench.py" --model "$model" --peak --iters 2 --config 32x512 \
        --mixed "$mixed" --batch-size 32 >"$out/torch.log" 2>&1
    for workload in "${workloads[@]}"; do
        theirs[$workload]=$(python3 - "$out/torch.log" "$workload" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        name = r.get("workload") or (f"{r['batch']}x{r['seq_len']}" if "batch" in r else None)
        if name == sys.argv[2]:
            print(f"{r['tokens_per_s']:.0f}")
            break
else:
    print("error")
PY
)
    done
    # The linear layers' multiply-adds per token, against the card's measured matrix ceiling: a
    # floor for what the GEMMs reach (the whole pass's time is counted, attention and all).
    gemm=$(python3 - "$model/config.json" "$out/torch.log" "${ours[mixed]:-0}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
d = c.get("head_dim") or h // c["num_attention_heads"]
q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
flops = 2 * layers * (h * (q + 2 * kv) + q * h + 3 * h * i)
peak = next((json.loads(l)["peak_bf16_tflops"] for l in open(sys.argv[2]) if "peak_bf16_tflops" in l), None)
rate = float(sys.argv[3]) * flops / 1e12
print(f"{rate:.0f} TFLOP/s in linear layers on the mixed workload" +
      (f", {100 * rate / peak:.0f}% of the measured {peak:.0f} TFLOP/s bf16 matmul" if peak else ""))
PY
)
else
    note "bench: make-random-qwen3.py failed (see gen.log)"
fi

# --- Table ---------------------------------------------------------------------------------------
{
    echo
    echo "== summary ($((SECONDS - started)) s)"
    echo "kernels: $kernels"
    echo "parity:  $parity"
    printf "%-10s %14s %14s %8s\n" "workload" "cuda tok/s" "torch tok/s" "ratio"
    for workload in "${workloads[@]}"; do
        mine=${ours[$workload]:-n/a}
        ref=${theirs[$workload]:-n/a}
        ratio=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.2f}")' "$mine" "$ref" \
            2>/dev/null || echo "-")
        printf "%-10s %14s %14s %8s\n" "$workload" "$mine" "$ref" "$ratio"
    done
    echo "gemm: ${gemm:-n/a}"
} | tee -a "$summary"
