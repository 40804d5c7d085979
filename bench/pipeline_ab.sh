#!/usr/bin/env bash
# The serving path of two commits side by side: builds BASE (a git revision) in a worktree and
# the working tree here, then alternates their stacks ROUNDS times on the tiny model
# (deploy/local/run.sh --profile production, CPU backend, one tokenizer and one GPU worker,
# each stack with its own configuration files) under the online workload, so both see the
# same minutes of this machine's drifting speed.
#
#   bench/pipeline_ab.sh BASE [ROUNDS] [CONCURRENCY] [SECONDS]
#   e.g. bench/pipeline_ab.sh 3e6336a 2 1,8,32,128 8
# BASE must be 3e6336a or later (run.sh taking prebuilt binaries).
#
# Prints loadgen's table rows prefixed with `base` or `head`; builds go to
# $CARGO_TARGET_DIR (default target/) for the head and target/ab-base for the base.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
base=${1:?usage: bench/pipeline_ab.sh BASE [ROUNDS] [CONCURRENCY] [SECONDS]}
rounds=${2:-2}
concurrency=${3:-1,8,32,128}
seconds=${4:-8}

deploy/local/setup.sh >/dev/null
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/base" "$base" >/dev/null
bins="--bin gateway --bin tokenizer-worker --bin gpu-worker"
# shellcheck disable=SC2086
(cd "$work/base" && CARGO_TARGET_DIR="$repo/target/ab-base" cargo build --release --quiet $bins)
# shellcheck disable=SC2086
cargo build --release --quiet $bins --bin loadgen
head_bins="${CARGO_TARGET_DIR:-$repo/target}/release"
loadgen="$head_bins/loadgen"
model="$repo/../shared/fixtures/qwen3-tiny"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_one() { # LABEL CHECKOUT BIN_DIR
  local label=$1 checkout=$2 bin_dir=$3 port log
  port=$(free_port)
  log="$work/$label.log"
  (cd "$checkout" && QWEN3_EMBED_BIN_DIR="$bin_dir" NATS_SERVER="$repo/.venv/bin/nats-server" \
    exec deploy/local/run.sh --model "$model" --backend cpu --profile production \
      --tokenizer-workers 1 --gpu-workers 1 --port "$port") >"$log" 2>&1 &
  local stack=$!
  for _ in $(seq 600); do
    grep -q "ready at" "$log" && break
    kill -0 "$stack" 2>/dev/null || { cat "$log" >&2; echo "pipeline_ab: $label stack died" >&2; exit 1; }
    sleep 0.2
  done
  "$loadgen" --url "http://127.0.0.1:$port" --api openai --workload online \
    --concurrency "$concurrency" --duration "$seconds" --warmup 2 2>/dev/null |
    grep ' online ' | sed "s/^/$label /"
  kill -TERM "$stack"
  wait "$stack" 2>/dev/null || true
}

echo "label system api workload conc requests req/s tokens/s p50_ms p90_ms p99_ms errors"
for _ in $(seq "$rounds"); do
  run_one base "$work/base" "$repo/target/ab-base/release"
  run_one head "$repo" "$head_bins"
done
