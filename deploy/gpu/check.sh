#!/usr/bin/env bash
# Runs ON a GPU machine, from the bundle deploy/gpu/prepare.sh makes (copied there as
# gpu-bundle/check.sh):
#   1. every kernel compiles with the machine's NVRTC,
#   2. the CUDA tests: each kernel against its CPU twin (cuda_parity), the model on the
#      qwen3-tiny fixture against transformers' golden vectors, batch invariance, memory limits,
#      and the tiny reranker against transformers' scores (cuda_model), CUDA graphs' replays
#      against golden vectors and passes run op by op (cuda_graphs),
#   3. throughput of a random Qwen3-Embedding-0.6B: `gpu-worker bench --backend cuda` (bf16: 32 x
#      512, 1 x 16 and 32 x 32 op by op and as CUDA graphs, the mixed workload) against PyTorch
#      + transformers (bf16, SDPA) on the same workloads (torch_bench.py), and the linear
#      layers' rate against a large cuBLAS matrix product on the same card,
#   4. the whole serving pipeline on the GPU (serve.sh), CUDA graphs on: golden vectors through
#      HTTP, then loadgen's bulk and online workloads on the 0.6B model,
#   5. in the time left, more rows: FP8 (32 x 512, 1 x 16 with and without graphs), the time
#      per op from CUDA events (`bench --profile`, mixed and 1 x 16), the q head norms in the
#      attention kernel (`--fuse-q-norm-rope`, mixed and 1 x 16 graph), the MLP in token chunks,
#   6. compute-sanitizer's four tools over the kernel tests, in the time left.
# Steps 1-4 took 137 s on an H200 before this session's rows were added, steps 1-3 83-98 s on
# an H100 (every step has a timeout; the whole stays under 6 minutes). Full logs go to $OUT
# (8 files); a short table is printed last.
#
# Usage (device tool, from the repository root, carrying gpu-bundle):  bash gpu-bundle/check.sh
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/gpu/common.sh
source "$here/common.sh"
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
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
note "kernels (NVRTC, sm_80 + sm_90 + sm_90a): $kernels"

# --- 2. CUDA tests, each in its own process: a sticky device error (an illegal address, say)
#        poisons the whole process's context, and must not hide the tests after it ---------------
parity=pass
for suite in cuda_parity cuda_model cuda_graphs; do
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
# Workloads: fixed batches (no padding either side): 32 x 512 for throughput, 1 x 16 and 32 x 32
# for the small batches of online traffic (bound by launches, not arithmetic); and the mixed
# workload of the issue (4,096 sequences of 16 to 512 tokens): ours packs them in arrival order
# into batches of at most 32,768 tokens (the production profile's budget); PyTorch runs them as
# sentence-transformers does (sorted longest first, 32 a batch, padded to the longest).
model=/tmp/qwen3-0.6b-random
mixed=4096:16:512
IFS=: read -r count low high <<<"$mixed"
budget=32768
say "generating the 0.6B model"
: >"$out/bench.log"
: >"$out/torch.log"
generated=no
timeout "$(cap 120)" python3 "$here/tools/make-random-qwen3.py" --out "$model" \
    --tokenizer-dir "$here/fixture" >"$out/gen.log" 2>&1 && generated=yes
[[ $generated == yes ]] || note "bench: make-random-qwen3.py failed (see gen.log)"
[[ -x "$here/bin/gpu-worker" ]] || note "bench: no gpu-worker binary in the bundle"
# bench DTYPE ARGS...: one `gpu-worker bench` row into bench.log.
bench() {
    [[ $generated == yes && -x "$here/bin/gpu-worker" ]] || return 0
    say "gpu-worker bench $*"
    bench_line "$model" "$@" 2>>"$out/bench.log" >>"$out/bench.log"
}
mixed_args=(--sequences "$count" --min-len "$low" --seq-len "$high" --batch "$count" --batch-tokens "$budget")
bench bf16 --batch 32 --seq-len 512 --iters 10
bench bf16 --batch 1 --seq-len 16 --iters 200
bench bf16 --batch 32 --seq-len 32 --iters 100
# The same small batches replayed as CUDA graphs (recorded in the warm-up pass).
bench bf16 --batch 1 --seq-len 16 --iters 200 --cuda-graph-max-tokens 2048
bench bf16 --batch 32 --seq-len 32 --iters 100 --cuda-graph-max-tokens 2048
bench bf16 "${mixed_args[@]}" --iters 2
if [[ $generated == yes ]]; then
    say "torch bench"
    timeout "$(cap 150)" python3 "$here/torch_bench.py" --model "$model" --peak --iters 2 --config 32x512 \
        --config 1x16 --config 32x32 --mixed "$mixed" --batch-size 32 >"$out/torch.log" 2>&1
fi

# --- 4. The serving pipeline on the GPU ----------------------------------------------------------
say "serving pipeline"
# With CUDA graphs for batches of up to 2,048 tokens: the golden check through HTTP covers
# replays, and the online workload is made of small batches (the bare rows above give both).
serving=$(QWEN3_EMBED__GPU__CUDA_GRAPH_MAX_TOKENS=2048 bash "$here/serve.sh" "$model" "$(cap 150)" 2>&1)

# --- 5. More rows, in the time left: FP8, time per op, fused q norms, the MLP in chunks ---------
# FP8 products (compute capability 9.0 and newer; refused, and so absent, elsewhere).
bench fp8 --batch 32 --seq-len 512 --iters 10
bench fp8 --batch 1 --seq-len 16 --iters 200 --cuda-graph-max-tokens 2048
bench fp8 --batch 1 --seq-len 16 --iters 200
# Time per op from CUDA events (there is no nsys), op by op: the mixed workload, 1 x 16.
bench bf16 "${mixed_args[@]}" --iters 1 --profile
bench bf16 --batch 1 --seq-len 16 --iters 50 --profile
# The q head norms and rotary embedding applied by the attention kernel as it loads q, against
# the mixed and 1 x 16 graph rows of step 3.
bench bf16 "${mixed_args[@]}" --iters 2 --fuse-q-norm-rope
bench bf16 --batch 1 --seq-len 16 --iters 200 --cuda-graph-max-tokens 2048 --fuse-q-norm-rope
# The MLP in token chunks whose intermediate values can stay in L2, against the whole batch's
# (the mixed row of step 3).
bench bf16 "${mixed_args[@]}" --iters 2 --mlp-chunk-tokens 2048
bench bf16 "${mixed_args[@]}" --iters 2 --mlp-chunk-tokens 1024

# --- 6. compute-sanitizer over the kernel tests (last: it takes what time the steps before
#         left, and the checks and numbers above matter more): memcheck, racecheck, synccheck, and initcheck
#         with bulk-copy (TMA) stores tracked, which cuBLAS's Hopper kernels write through
#         (without it, initcheck reported their outputs as never written). Output goes to
#         cuda_parity.log: $OUT brings back 8 files at most. ---------------------------------------
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
sanitized=()
if [[ -x $sanitizer ]]; then
    for tool in memcheck racecheck synccheck "initcheck --check-bulk-copy yes"; do
        say "compute-sanitizer $tool"
        echo "=== compute-sanitizer --tool $tool" >>"$out/cuda_parity.log"
        # shellcheck disable=SC2086 # $tool holds the tool and its options
        if timeout "$(cap 60)" "$sanitizer" --tool $tool --error-exitcode 1 --print-limit 5 \
            "$here/tests/cuda_parity" --test-threads=1 >>"$out/cuda_parity.log" 2>&1; then
            sanitized+=("${tool%% *} pass")
        else
            sanitized+=("${tool%% *} FAIL")
        fi
    done
else
    sanitized+=("not found")
fi
sanitizers=$(IFS=,; echo "${sanitized[*]}")
note "compute-sanitizer (cuda_parity): $sanitizers"

# --- Table ---------------------------------------------------------------------------------------
{
    echo
    echo "== summary ($((SECONDS - started)) s)"
    echo "kernels: $kernels"
    echo "parity:  $parity"
    echo "compute-sanitizer: $sanitizers"
    # Both sides' JSON lines by workload; the linear layers' multiply-adds per token against the
    # card's measured matrix ceiling give a floor for what the GEMMs reach on the mixed workload
    # (the whole pass's time is counted, attention and all).
    python3 - "$out/bench.log" "$out/torch.log" "$model/config.json" "$here" <<'PY'
import json, sys

def runs(path):
    found = {}
    for line in open(path):
        if line.startswith("{"):
            r = json.loads(line)
            if "tokens_per_s" not in r:
                found["peak"] = r
                continue
            mixed = r.get("workload") == "mixed" or r.get("sequences", r["batch"]) != r["batch"] \
                or r.get("min_len", r["seq_len"]) != r["seq_len"]
            name = "mixed" if mixed else f"{r['batch']}x{r['seq_len']}"
            name += " fp8" if r.get("backend") == "cuda-fp8" else ""
            name += " graph" if r.get("cuda_graph_max_tokens") else ""
            name += f" chunk{r['mlp_chunk_tokens']}" if r.get("mlp_chunk_tokens") else ""
            name += " fuseq" if r.get("fuse_q_norm_rope") else ""
            found[name + (" profile" if "ops" in r else "")] = r
    return found

ours, theirs = runs(sys.argv[1]), runs(sys.argv[2])

def rate(r):
    return f"{r['tokens_per_s']:.0f}" if r else "n/a"

def ms(r):
    """Milliseconds per batch, or per pass of the mixed workload."""
    if not r:
        return "n/a"
    return f"{r['tokens'] / r['tokens_per_s'] * 1e3 if 'tokens' in r else r['ms_per_batch']:.3f}"

print(f"{'workload':<16} {'cuda tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'cuda ms':>9} {'torch ms':>9}")
for name in ("32x512", "1x16", "1x16 graph", "1x16 graph fuseq", "32x32", "32x32 graph", "mixed",
             "mixed fuseq", "mixed chunk1024", "mixed chunk2048", "32x512 fp8", "1x16 fp8",
             "1x16 fp8 graph"):
    a, b = ours.get(name), theirs.get(name.split(" ")[0])
    ratio = f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}" if a and b else "-"
    print(f"{name:<16} {rate(a):>11} {rate(b):>12} {ratio:>6} {ms(a):>9} {ms(b):>9}")
try:
    sys.path.insert(0, sys.argv[4])
    from model_flops import linear_flops, load_config
    gemm = ours["mixed"]["tokens_per_s"] * linear_flops(load_config(sys.argv[3])) / 1e12
    peak = theirs["peak"]["peak_bf16_tflops"]
    print(f"gemm: {gemm:.0f} TFLOP/s in linear layers on the mixed workload, "
          f"{100 * gemm / peak:.0f}% of the measured {peak:.0f} TFLOP/s bf16 matmul")
except (ImportError, KeyError, OSError, ValueError) as e:
    print(f"gemm: n/a ({e!r})")
# Time per op (CUDA events), the largest first, as shares of the ops' sum.
for name, r in ours.items():
    if name.endswith(" profile"):
        total = sum(op["ms"] for op in r["ops"]) or 1.0
        ops = sorted(r["ops"], key=lambda op: -op["ms"])
        shares = ", ".join(f"{op['op']} {100 * op['ms'] / total:.1f}%" for op in ops[:8])
        per_pass = total / r["iters"]
        print(f"ops {name.removesuffix(' profile')} ({per_pass:.3f} ms of ops a pass): {shares}")
PY
    echo "${serving:-serve: not run}"
} | tee -a "$summary"
