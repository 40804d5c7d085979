#!/usr/bin/env bash
# The serving benchmark, one command: ours and the peers (the seed's Ray Serve stack,
# Infinity) in turn on this machine, then docs/benchmarks.md's generated section and
# docs/img/latency-throughput.png.
#
#   bench/run-all.sh [--quick] [--systems ours,ray,infinity] [--bulk-docs N] [--results DIR]
#                    [--no-report]
#
# For each system: serve the tiny model, check its vectors against the fixture's golden
# (bench/peers/check_golden.py; a system that fails is not timed), run the online workload
# (one query per request, concurrency 1,8,32,128); then serve the random 0.6B-shaped model
# and run the bulk workload (2000 documents, 32 per request, concurrency 8). Every system
# serves the same directories, written in the published Qwen3-Embedding layout
# (bench/peers/st_layout.py) under $BENCH_MODELS (default /tmp/bench-models).
# A 32-document request of the 0.6B model takes about a minute on 2 CPUs, so the bulk runs
# raise every system's request timeout to 20 minutes (ours and the seed default to 30-60 s).
# A server has $BENCH_START_TIMEOUT seconds (default 1800) to answer /health: Infinity runs
# a warm-up of 32 x 513 tokens before it listens, minutes on 2 CPUs with the 0.6B model.
# --quick: seconds-long runs and a few documents, to check the scripts, not to measure.
# The full run takes longer than some sittings allow (3-4 hours on 2 vCPUs, nearly all of it
# the bulk runs): it can be split, one --systems part at a time into one --results DIR, with
# --no-report until the last part. Each part leaves its own meta-<systems>.json; report.py
# reports each system with the date and versions of the part that ran it. A part run again
# appends to its loadgen files: delete that system's files in DIR first.
# OURS_FLAGS, RAY_FLAGS, INFINITY_FLAGS: flags instead of (ours) or added to (peers) each
# server's defaults, e.g. RAY_FLAGS="--cpus 1" (the report lists them).
# Needs: bench/peers/setup.sh (run here when the venvs are missing), the Rust toolchain.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

quick=0
bulk_docs=""
systems=ours,ray,infinity
results=""
report=1
while (($#)); do
  case "$1" in
    --quick) quick=1; shift ;;
    --bulk-docs) bulk_docs=$2; shift 2 ;;
    --systems) systems=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --no-report) report=0; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-all.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# --results is relative to where run-all.sh is started.
if [[ -n $results && $results != /* ]]; then results=$PWD/$results; fi
cd "$repo"

if ((quick)); then
  online=(--concurrency 1,8 --duration 2 --warmup 1)
  bulk=(--docs "${bulk_docs:-16}" --batch 8 --concurrency 2 --warmup 0)
else
  # Enough distinct queries that none repeats: ours sent about 420,000 in the four levels of the
  # 2026-11-26 run, which wrapped loadgen's default pool of 200,000.
  online=(--concurrency 1,8,32,128 --duration 20 --warmup 3 --unique-queries 600000)
  # No bulk warm-up: its requests would take minutes; one-time costs are lost in ~45 minutes.
  bulk=(--docs "${bulk_docs:-2000}" --batch 32 --concurrency 8 --warmup 0)
fi
bulk_timeout_s=1200
results=${results:-$repo/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
models_dir=${BENCH_MODELS:-/tmp/bench-models}
random_model=${BENCH_RANDOM_MODEL:-/tmp/qwen3-0.6b-random}
start_timeout=${BENCH_START_TIMEOUT:-1800}
log() { echo "run-all.sh: $*" >&2; }

# --- what the run needs: venvs, binaries, model directories ---------------------------------
bench/peers/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/rel}
cargo build --release -q -p gateway -p tokenizer-worker -p gpu-worker -p e2e-tests
loadgen=$CARGO_TARGET_DIR/release/loadgen
py=.venv-ray/bin/python

if [[ ! -f $random_model/config.json ]]; then
  log "writing the random 0.6B-shaped model to $random_model"
  $py ../shared/tools/make-random-qwen3.py --preset 0.6b --out "$random_model" \
    --tokenizer-dir ../shared/fixtures/qwen3-tiny
fi
tiny=$models_dir/qwen3-tiny
big=$models_dir/qwen3-0.6b-random
$py bench/peers/st_layout.py ../shared/fixtures/qwen3-tiny "$tiny" >&2
$py bench/peers/st_layout.py "$random_model" "$big" >&2

# --- starting and stopping one server -----------------------------------------------------
server_pid=""
# descendants PID: every process below PID (Ray's workers start their own sessions, so the
# process group alone does not hold them all).
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { keep[root] = 1; do { changed = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } while (changed)
          for (p in keep) if (p != root) print p }'
}
alive() { local stat; stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]; }
stop_server() {
  [[ -n $server_pid ]] || return 0
  local pids
  pids=$(descendants "$server_pid")
  # The server's own shutdown first (run.sh drains its stack, Ray stops its cluster), then
  # whatever is left of its process tree.
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 60); do
    alive "$server_pid" || break
    sleep 0.5
  done
  kill -KILL -- "-$server_pid" 2>/dev/null || true
  # shellcheck disable=SC2086
  [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server SYSTEM MODEL_DIR: starts it, waits for /health, sets $port, $api and
# $golden_args (what check_golden.py needs to know about the system).
start_server() {
  local system=$1 model=$2 logfile="$results/$1-$(basename "$2").log"
  port=$(free_port)
  golden_args=()
  case "$system" in
    ours)
      api=seed
      # One tokenizer and one compute worker on 2 CPUs, like the peers' one replica / engine.
      # The work queue must keep batches as long as requests wait (the gateway checks).
      # shellcheck disable=SC2086
      QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S=$bulk_timeout_s QWEN3_EMBED__QUEUE__MAX_AGE_S=$bulk_timeout_s \
        setsid deploy/local/run.sh --model "$model" \
        --port "$port" ${OURS_FLAGS:---profile production --backend cpu --tokenizer-workers 1 --gpu-workers 1} \
        >"$logfile" 2>&1 &
      ;;
    ray)
      api=seed
      # shellcheck disable=SC2086
      setsid bench/peers/serve-ray.sh "$model" "$port" --request-timeout-s "$bulk_timeout_s" ${RAY_FLAGS:-} \
        >"$logfile" 2>&1 &
      ;;
    infinity)
      api=infinity
      # Measured, not assumed: these two golden texts end in whitespace, which Infinity strips
      # from every input (its API schema has strip_whitespace=True). Reported, not failed.
      golden_args=(--known-deviation "leading_trailing_spaces,code_snippet:Infinity strips leading and trailing whitespace from every input")
      # shellcheck disable=SC2086
      setsid bench/peers/serve-infinity.sh "$model" "$port" ${INFINITY_FLAGS:-} >"$logfile" 2>&1 &
      ;;
    *) log "unknown system $system"; exit 2 ;;
  esac
  server_pid=$!
  log "$system: serving $(basename "$model") on port $port (log: $logfile)"
  local started=$SECONDS deadline=$((SECONDS + start_timeout))
  until curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; do
    if ! alive "$server_pid"; then
      log "$system exited during start-up; the end of its log:"
      tail -n 30 "$logfile" >&2
      echo "$system exited during start-up with $(basename "$model") (log: $(basename "$logfile"))" \
        >"$results/start-failed-$system-$(basename "$model").txt"
      stop_server
      return 1
    fi
    if ((SECONDS > deadline)); then
      log "$system not healthy after $start_timeout s; the end of its log:"
      tail -n 30 "$logfile" >&2
      echo "$system not healthy within $start_timeout s with $(basename "$model") (log: $(basename "$logfile"))" \
        >"$results/start-failed-$system-$(basename "$model").txt"
      stop_server
      return 1
    fi
    sleep 1
  done
  log "$system: healthy after $((SECONDS - started)) s"
}

# --- the runs ------------------------------------------------------------------------------
IFS=, read -r -a system_list <<<"$systems"
for system in "${system_list[@]}"; do
  if ! start_server "$system" "$tiny"; then
    echo "{\"system\": \"$system\", \"passed\": false, \"reason\": \"did not start\"}" >"$results/golden-$system.json"
    continue
  fi
  if $py bench/peers/check_golden.py "http://127.0.0.1:$port" "$api" "${golden_args[@]}" >"$results/golden-$system.out" 2>"$results/golden-$system.err"; then
    passed=true
  else
    passed=false
  fi
  cat "$results/golden-$system.err" >&2
  $py - "$system" "$passed" "$results" <<'PY'
import json, sys
system, passed, results = sys.argv[1], sys.argv[2] == "true", sys.argv[3]
out = open(f"{results}/golden-{system}.out").read().strip()
err = open(f"{results}/golden-{system}.err").read().strip()
record = {"system": system, "passed": passed, "summary": json.loads(out) if out else None, "detail": err}
json.dump(record, open(f"{results}/golden-{system}.json", "w"), indent=1)
PY
  if [[ $passed != true ]]; then
    log "$system: wrong vectors on the tiny model; not timed"
    stop_server
    continue
  fi
  "$loadgen" --api "$api" --url "http://127.0.0.1:$port" --label "$system" --estimate-tokens --workload online \
    "${online[@]}" --out "$results/$system-tiny-online.jsonl" || log "$system: online run failed"
  stop_server

  if ! start_server "$system" "$big"; then
    continue
  fi
  "$loadgen" --api "$api" --url "http://127.0.0.1:$port" --label "$system" --estimate-tokens --workload bulk \
    "${bulk[@]}" --timeout "$bulk_timeout_s" --out "$results/$system-0.6b-bulk.jsonl" || log "$system: bulk run failed"
  stop_server
done

# --- the report ------------------------------------------------------------------------------
$py bench/collect_meta.py --quick "$quick" --systems "$systems" --online "${online[*]}" --bulk "${bulk[*]}" \
  --models "$tiny" "$big" >"$results/meta-${systems//,/-}.json"
log "results in $results"
if ((report)); then
  $py bench/report.py "$results"
fi
