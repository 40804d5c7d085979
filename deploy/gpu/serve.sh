#!/usr/bin/env bash
# Runs ON a GPU machine, from the bundle deploy/gpu/prepare.sh makes (check.sh's step 4): the
# whole serving pipeline with the CUDA backend, started by deploy/local/run.sh (the bundle's
# copy, on the bundle's binaries) with the production profile (nats-server with JetStream, two
# GPU workers sharing the card at 0.45 each, two tokenizer workers, the gateway):
#   a. qwen3-tiny: bench/peers/check_golden.py through both HTTP APIs (every golden case in one
#      batch, then alone; cosine >= 0.999),
#   b. the 0.6B model check.sh generated: loadgen's bulk workload (documents of 32-512 tokens in
#      requests of 32, concurrency 8) and its online workload (concurrency 1, 32, 128), with
#      the gateway's per-stage means at concurrency 1 (where a lone request's time goes).
# Usage: serve.sh MODEL_0_6B_DIR SECONDS_LEFT [BACKEND] (BACKEND cpu tries the script on a
# machine without a GPU). Logs go to $OUT/serve.log, one summary line per check to stdout.
# Settings reach the workers through the environment (QWEN3_EMBED__GPU__CUDA_GRAPH_MAX_TOKENS,
# say); a worker that had to turn CUDA graphs off is reported.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$here/out}
model=$1
deadline=$((SECONDS + $2))
backend=${3:-cuda}
log="$out/serve.log"
bin="$here/bin"
port=4008
url="http://127.0.0.1:$port"
stack=""

left() { echo $((deadline - SECONDS > 1 ? deadline - SECONDS : 1)); }

stop_stack() {
    [[ -n $stack ]] || return 0
    kill -TERM "$stack" 2>/dev/null
    wait "$stack" 2>/dev/null
    stack=""
}
trap stop_stack EXIT

# Starts the stack on MODEL_DIR (served under the directory's name); returns 1 when /health is
# not 200 within 60 s.
start_stack() {
    QWEN3_EMBED_BIN_DIR="$bin" NATS_SERVER="$bin/nats-server" RUST_LOG=warn \
        "$here/deploy/local/run.sh" --model "$1" --port "$port" --backend "$backend" \
        --profile production --no-secure >>"$log" 2>&1 &
    stack=$!
    for _ in $(seq 120); do
        python3 -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('$url/health', timeout=1).status != 200)" \
            2>/dev/null && return 0
        kill -0 "$stack" 2>/dev/null || break
        sleep 0.5
    done
    echo "serve: the stack on $(basename "$1") did not become healthy (see serve.log)"
    return 1
}

# The gateway's Prometheus metrics.
metrics() {
    python3 -c "import urllib.request; print(urllib.request.urlopen('$url/metrics', timeout=5).read().decode())" \
        2>>"$log"
}

# Mean time per request of each stage between two scrapes of /metrics (BEFORE AFTER): the
# change of each histogram's sum over the change of its count, over all label sets (for HTTP,
# the embedding routes only).
stage_means() {
    python3 - "$1" "$2" <<'PY'
import re, sys

def totals(path):
    found = {}
    for line in open(path):
        m = re.match(r"(embed_[a-z_]+)_(sum|count)(\{[^}]*\})? ([0-9.eE+-]+)$", line.strip())
        if not m or (m.group(1).startswith("embed_http") and "embeddings" not in (m.group(3) or "")):
            continue
        key = (m.group(1), m.group(2))
        found[key] = found.get(key, 0.0) + float(m.group(4))
    return found

before, after = totals(sys.argv[1]), totals(sys.argv[2])
parts = []
for name, label in [("embed_http_request_duration_seconds", "http"),
                    ("embed_stage_tokenize_seconds", "tokenize"),
                    ("embed_stage_queue_wait_seconds", "queue wait"),
                    ("embed_stage_forward_seconds", "forward"),
                    ("embed_stage_assembly_seconds", "assembly")]:
    count = after.get((name, "count"), 0) - before.get((name, "count"), 0)
    total = after.get((name, "sum"), 0) - before.get((name, "sum"), 0)
    parts.append(f"{label} {1e3 * total / count:.3f}" if count > 0 else f"{label} n/a")
print("serve: c=1 stage means (ms): " + ", ".join(parts))
PY
}

# a. The tiny model's vectors through HTTP.
echo "== serving pipeline, qwen3-tiny" >>"$log"
if start_stack "$here/fixture"; then
    for api in seed openai; do
        if timeout "$(left)" python3 "$here/check_golden.py" "$url" "$api" --model fixture \
            --golden "$here/fixture/golden.json" >>"$log" 2>&1; then
            echo "serve: golden through the $api API: pass"
        else
            echo "serve: golden through the $api API: FAIL (see serve.log)"
        fi
    done
    grep -h '"min_cosine"' "$log" | tail -n 2 | sed 's/^/  /'
fi
stop_stack

# b. The 0.6B model under load.
echo "== serving pipeline, 0.6B" >>"$log"
runs=$(mktemp)
if start_stack "$model"; then
    loadgen() {
        timeout "$(left)" "$bin/loadgen" --url "$url" --api openai --model "$(basename "$model")" \
            --label "ours-$backend" --out "$runs" "$@" >>"$log" 2>&1
    }
    loadgen --workload bulk --docs 8000 --batch 32 --concurrency 8 --warmup 2 ||
        echo "serve: bulk workload failed (see serve.log)"
    before=$(mktemp)
    after=$(mktemp)
    metrics >"$before"
    loadgen --workload online --concurrency 1 --duration 5 --warmup 1 ||
        echo "serve: online workload failed at concurrency 1 (see serve.log)"
    metrics >"$after"
    stage_means "$before" "$after"
    loadgen --workload online --concurrency 32,128 --duration 5 --warmup 1 ||
        echo "serve: online workload failed (see serve.log)"
    cat "$runs" >>"$log"
    python3 - "$runs" <<'PY'
import json, sys
try:
    runs = [json.loads(line) for line in open(sys.argv[1])]
except OSError:
    runs = []
for r in runs:
    latency = r["latency_ms"]
    print(f"serve: {r['workload']} c={r['concurrency']}: {r['req_per_s']:.0f} req/s, "
          f"{r['tokens_per_s']:.0f} tokens/s ({r['tokens_source']}), p50 {latency['p50']:.1f} ms, "
          f"p99 {latency['p99']:.1f} ms, errors {r['errors_total']}")
PY
fi
stop_stack
echo "serve: cuda_graph_max_tokens ${QWEN3_EMBED__GPU__CUDA_GRAPH_MAX_TOKENS:-as configured}"
if grep -q "CUDA graphs turned off" "$log"; then
    echo "serve: a worker turned CUDA graphs off:"
    grep -h "CUDA graphs turned off" "$log" | head -n 2 | sed 's/^/  /'
fi
