#!/usr/bin/env bash
# Runs the whole stack in the foreground: nats-server (unless --nats-url), tokenizer
# workers, GPU workers and the gateway. Builds what is missing, waits until /health answers
# 200, prints the URL, and stops every process it started on Ctrl-C or SIGTERM.
#
#   deploy/local/run.sh --model DIR_OR_HUB_ID [--port N] [--backend cpu|cuda|auto]
#                       [--tokenizer-workers N] [--gpu-workers N] [--profile dev|production]
#                       [--nats-url URL] [--rerank-model DIR_OR_HUB_ID]
#   --rerank-model also starts a rerank tokenizer worker and a rerank GPU worker (as many as
#   --tokenizer-workers / --gpu-workers) for POST /v1/rerank and /rerank.
# With QWEN3_EMBED_BIN_DIR set it runs the binaries there as they are (no set-up, no build:
# a machine without Rust, such as the GPU machine of deploy/gpu/serve.sh), and NATS_SERVER
# names the nats-server binary (default .venv/bin/nats-server).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

model="Qwen/Qwen3-Embedding-0.6B"
port=4008
backend=auto
profile=dev
nats_url=""
tokenizer_workers=""
gpu_workers=""
rerank_model=""

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --tokenizer-workers) tokenizer_workers=$2; shift 2 ;;
    --gpu-workers) gpu_workers=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --nats-url) nats_url=$2; shift 2 ;;
    --rerank-model) rerank_model=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

config_dir="$repo/deploy/config"
[[ -f "$config_dir/$profile.toml" ]] || { echo "run.sh: no profile $config_dir/$profile.toml" >&2; exit 2; }

# Replica counts: flags, else the profile's [replicas], else default.toml's.
replicas() { # key
  local value
  value=$(awk -v key="$1" '/^\[/{s=$0} s=="[replicas]" && $1==key {print $3}' "$config_dir/$profile.toml")
  [[ -n "$value" ]] || value=$(awk -v key="$1" '/^\[/{s=$0} s=="[replicas]" && $1==key {print $3}' "$config_dir/default.toml")
  echo "${value:-1}"
}
tokenizer_workers=${tokenizer_workers:-$(replicas tokenizer_workers)}
gpu_workers=${gpu_workers:-$(replicas gpu_workers)}

# A model: a directory, or a Hugging Face id found in (or downloaded to) the usual cache.
resolve_model() { # DIR_OR_HUB_ID
  local model=$1
  if [[ -d "$model" ]]; then
    (cd "$model" && pwd)
    return
  fi
  local cache="${HF_HOME:-$HOME/.cache/huggingface}/hub/models--${model//\//--}/snapshots"
  local snapshot
  snapshot=$(ls -d "$cache"/*/ 2>/dev/null | head -n 1 || true)
  if [[ -n "$snapshot" && -f "$snapshot/config.json" ]]; then
    echo "${snapshot%/}"
    return
  fi
  # Offline or not, deploy/local/download_model.py says what went wrong and what to do.
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  if [[ -z "${HF_HUB_OFFLINE:-}" ]] && ! .venv/bin/python -c "import huggingface_hub" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check huggingface_hub >&2 || true
  fi
  .venv/bin/python deploy/local/download_model.py "$model"
}
model_dir=$(resolve_model "$model" | tail -n 1)
model_name=$model
[[ -d "$model" ]] && model_name=$(basename "$model_dir")
rerank_dir=""
rerank_name=""
if [[ -n "$rerank_model" ]]; then
  rerank_dir=$(resolve_model "$rerank_model" | tail -n 1)
  rerank_name=$rerank_model
  [[ -d "$rerank_model" ]] && rerank_name=$(basename "$rerank_dir")
fi

if [[ -n "${QWEN3_EMBED_BIN_DIR:-}" ]]; then
  bin_dir=$QWEN3_EMBED_BIN_DIR
else
  deploy/local/setup.sh >/dev/null
  bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
  for bin in gateway tokenizer-worker gpu-worker; do
    if [[ ! -x "$bin_dir/$bin" || -n "$(find . -path ./target -prune -o -name '*.rs' -newer "$bin_dir/$bin" -print -quit)" ]]; then
      echo "run.sh: building release binaries"
      cargo build --release --bin gateway --bin tokenizer-worker --bin gpu-worker
      break
    fi
  done
fi
nats_server=${NATS_SERVER:-.venv/bin/nats-server}

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo "run.sh: stopping"
  # The gateway and the workers first (they drain through NATS), then the server.
  local stages=("${pids[@]:$has_nats}")
  ((${#stages[@]})) && kill -TERM "${stages[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0
    for pid in "${stages[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  ((${#stages[@]})) && kill -KILL "${stages[@]}" 2>/dev/null || true
  ((has_nats)) && kill -TERM "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
has_nats=0
trap "stop_all; exit 0" INT TERM
trap stop_all EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ -z "$nats_url" ]]; then
  nats_port=$(free_port)
  nats_store=$(mktemp -d)
  "$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_store" &
  pids+=($!)
  has_nats=1
  nats_url="nats://127.0.0.1:$nats_port"
  for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
fi

export QWEN3_EMBED_CONFIG_DIR="$config_dir" QWEN3_EMBED_PROFILE="$profile" NATS_URL="$nats_url"
for _ in $(seq "$gpu_workers"); do
  "$bin_dir/gpu-worker" --model-dir "$model_dir" --model-name "$model_name" --backend "$backend" &
  pids+=($!)
done
for _ in $(seq "$tokenizer_workers"); do
  "$bin_dir/tokenizer-worker" --model-dir "$model_dir" --model-name "$model_name" &
  pids+=($!)
done
gateway_args=(--port "$port" --model "$model_name")
if [[ -n "$rerank_dir" ]]; then
  # The reranker's own pools: rerank GPU workers pull only the rerank stream.
  for _ in $(seq "$gpu_workers"); do
    "$bin_dir/gpu-worker" --task rerank --model-dir "$rerank_dir" --model-name "$rerank_name" --backend "$backend" &
    pids+=($!)
  done
  for _ in $(seq "$tokenizer_workers"); do
    "$bin_dir/tokenizer-worker" --task rerank --model-dir "$rerank_dir" --model-name "$rerank_name" &
    pids+=($!)
  done
  gateway_args+=(--rerank-model "$rerank_name")
fi
"$bin_dir/gateway" "${gateway_args[@]}" &
pids+=($!)

url="http://127.0.0.1:$port"
for _ in $(seq 600); do
  if python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$url/health', timeout=1).status == 200 else 1)" 2>/dev/null; then
    echo "run.sh: ready at $url  (OpenAI API: $url/v1/embeddings, seed API: $url/api/v1/embedding/api)"
    echo "run.sh: $tokenizer_workers tokenizer worker(s), $gpu_workers GPU worker(s), backend $backend, NATS $nats_url; Ctrl-C stops"
    [[ -n "$rerank_dir" ]] && echo "run.sh: reranker $rerank_name: $url/v1/rerank, $url/rerank"
    wait -n "${pids[@]}" || true
    echo "run.sh: a process exited; stopping the stack" >&2
    exit 1
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: process $pid exited during start-up" >&2; exit 1; }
  done
  sleep 0.5
done
echo "run.sh: the stack did not become healthy within 5 minutes" >&2
exit 1
