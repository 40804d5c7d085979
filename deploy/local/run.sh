#!/usr/bin/env bash
# Runs the whole stack in the foreground: nats-server (unless --nats-url), tokenizer
# workers, GPU workers and the gateway. Builds what is missing, waits until /health answers
# 200, prints the URL, then supervises: a process that exits is started again with the same
# arguments (after 1 s, doubling to 30 s while it keeps failing), so the stack stays up; one
# that exits before the stack is healthy stops it all (exit 1). Ctrl-C or SIGTERM stops
# every process it started.
#
#   deploy/local/run.sh --model DIR_OR_HUB_ID... [--host ADDR] [--port N] [--backend cpu|cuda|auto]
#                       [--tokenizer-workers N] [--gpu-workers N] [--profile dev|production]
#                       [--nats-url URL] [--rerank-model DIR_OR_HUB_ID]...
#                       [--secure|--no-secure] [--nats-auth-dir DIR]
#   --host is the gateway's bind address: 127.0.0.1 (this machine only) by default; 0.0.0.0
#   serves every interface, which the production profile allows only with API keys
#   (QWEN3_EMBED_API_KEYS or QWEN3_EMBED__GATEWAY__API_KEYS_FILE).
#   Paths (model directories, --nats-auth-dir, and the two variables below) are relative to
#   where run.sh is started (a --model that is no directory there, nor in the repository, is
#   a hub id).
#   --model may be given more than once. The first is the default embedding model (requests
#   without a `model` field, the seed API); each further one gets a pool of its own
#   (--tokenizer-workers tokenizer and --gpu-workers GPU workers) serving it on subjects of
#   its own ([nats] model_subjects), for requests whose `model` names it. A model's name is
#   its directory's name, or the hub id; no two may share a subject token (docs/protocol.md).
#   --rerank-model also starts rerank tokenizer and rerank GPU workers (as many as
#   --tokenizer-workers / --gpu-workers) for POST /v1/rerank and /rerank; it too may be
#   given more than once, the first being the default reranker.
#   --secure (the default of --profile production) gives every process its own NATS identity
#   and NKey (nats-auth writes them once into --nats-auth-dir, default target/run/nats-auth,
#   with the models after the first, and the nats-server run.sh starts admits only them).
#   With --nats-url the server is yours: --secure then needs --nats-auth-dir, the seeds of
#   the auth.conf it runs (nats-auth --model NAME for each further model).
# With QWEN3_EMBED_BIN_DIR set it runs the binaries there as they are (no set-up, no build:
# a machine without Rust, such as the GPU machine of deploy/gpu/serve.sh), and NATS_SERVER
# names the nats-server binary (default .venv/bin/nats-server).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)

models=()        # --model, in order: the first is the default
host=127.0.0.1
port=4008
backend=auto
profile=dev
nats_url=""
tokenizer_workers=""
gpu_workers=""
rerank_models=() # --rerank-model, in order: the first is the default
secure=""        # on, off, or empty: the profile decides
nats_auth_dir="" # where the NATS seeds are (or are written)

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --model) models+=("$2"); shift 2 ;;
    --host) host=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --tokenizer-workers) tokenizer_workers=$2; shift 2 ;;
    --gpu-workers) gpu_workers=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --nats-url) nats_url=$2; shift 2 ;;
    --rerank-model) rerank_models+=("$2"); shift 2 ;;
    --secure) secure=on; shift ;;
    --no-secure) secure=off; shift ;;
    --nats-auth-dir) nats_auth_dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
((${#models[@]})) || models=("Qwen/Qwen3-Embedding-0.6B")
# Paths given to run.sh are relative to where it was started: a model directory there (else
# a directory of the repository, else a hub id), --nats-auth-dir, QWEN3_EMBED_BIN_DIR and
# NATS_SERVER.
for i in "${!models[@]}"; do
  if [[ -d ${models[i]} ]]; then models[i]=$(cd "${models[i]}" && pwd); fi
done
for i in "${!rerank_models[@]}"; do
  if [[ -d ${rerank_models[i]} ]]; then rerank_models[i]=$(cd "${rerank_models[i]}" && pwd); fi
done
absolute() { if [[ $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
if [[ -n $nats_auth_dir ]]; then nats_auth_dir=$(absolute "$nats_auth_dir"); fi
if [[ -n ${QWEN3_EMBED_BIN_DIR:-} ]]; then QWEN3_EMBED_BIN_DIR=$(absolute "$QWEN3_EMBED_BIN_DIR"); fi
if [[ -n ${NATS_SERVER:-} ]]; then NATS_SERVER=$(absolute "$NATS_SERVER"); fi
cd "$repo"

config_dir="$repo/deploy/config"
[[ -f "$config_dir/$profile.toml" ]] || { echo "run.sh: no profile $config_dir/$profile.toml" >&2; exit 2; }
# NATS identities: on by default in production.
if [[ -z "$secure" ]]; then
  secure=off
  [[ "$profile" == production ]] && secure=on
fi
if [[ "$secure" == on && -n "$nats_url" && -z "$nats_auth_dir" ]]; then
  echo "run.sh: --secure with --nats-url needs --nats-auth-dir DIR: the seeds (nats-auth --out DIR) of the auth.conf that server runs" >&2
  exit 2
fi

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
  local cache="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}/models--${model//\//--}/snapshots"
  local snapshots=("$cache"/*/)
  local snapshot=${snapshots[0]}
  if [[ -f "$snapshot/config.json" ]]; then
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
# model_token NAME: the subject token of a model, as common::subjects::model_token makes it:
# ASCII letters and digits lowercased, `_` kept, anything else `-`, at most 64 characters.
model_token() {
  local token=${1,,}
  token=${token//[^a-z0-9_]/-}
  echo "${token:0:64}"
}

# resolve_models FLAG DIR_OR_HUB_ID...: sets model_dirs and model_names, one each per model:
# its directory and its name (the directory's name, or the hub id). Two models of one task
# must not share a subject token (their workers would serve each other's requests).
model_dirs=()
model_names=()
resolve_models() {
  local flag=$1 spec name token i tokens=()
  model_dirs=()
  model_names=()
  for spec in "${@:2}"; do
    model_dirs+=("$(resolve_model "$spec" | tail -n 1)")
    name=$spec
    [[ -d "$spec" ]] && name=$(basename "${model_dirs[-1]}")
    token=$(model_token "$name")
    for i in "${!tokens[@]}"; do
      if [[ ${model_names[i]} == "$name" ]]; then
        echo "run.sh: $flag $name is given twice" >&2
        exit 2
      elif [[ ${tokens[i]} == "$token" ]]; then
        echo "run.sh: $flag ${model_names[i]} and $flag $name share the subject token $token; give one another name (its directory's)" >&2
        exit 2
      fi
    done
    tokens+=("$token")
    model_names+=("$name")
  done
}
resolve_models --model "${models[@]}"
embed_dirs=("${model_dirs[@]}")
embed_names=("${model_names[@]}")
rerank_dirs=()
rerank_names=()
if ((${#rerank_models[@]})); then
  resolve_models --rerank-model "${rerank_models[@]}"
  rerank_dirs=("${model_dirs[@]}")
  rerank_names=("${model_names[@]}")
fi

if [[ -n "${QWEN3_EMBED_BIN_DIR:-}" ]]; then
  bin_dir=$QWEN3_EMBED_BIN_DIR
else
  deploy/local/setup.sh >/dev/null
  bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
  for bin in gateway tokenizer-worker gpu-worker nats-auth; do
    if [[ ! -x "$bin_dir/$bin" || -n "$(find . -path ./target -prune -o -name '*.rs' -newer "$bin_dir/$bin" -print -quit)" ]]; then
      echo "run.sh: building release binaries"
      cargo build --release --bin gateway --bin tokenizer-worker --bin gpu-worker --bin nats-auth
      break
    fi
  done
fi
nats_server=${NATS_SERVER:-.venv/bin/nats-server}

# ---------------------------------------------------------------------------------------
# Supervision. Every process run.sh keeps running has a slot: an index into the arrays
# below. The processes stay direct children of run.sh (deploy/local/soak.sh finds them with
# `ps --ppid`). After start-up the main loop waits for any child to exit, logs it, and starts
# the same command again once the slot's backoff has passed; the backoff is timed by a
# `sleep` child, so one `wait -n` hears both exits and due restarts.
# ---------------------------------------------------------------------------------------
names=()    # what it is, in log lines: "gpu-worker #2"
commands=() # its command line, quoted for eval
pids=()     # its process (the last one started)
timers=()   # the `sleep` that ends when its restart is due; empty while it runs
backoffs=() # seconds before its next restart
started=()  # when it was last started ($SECONDS)
min_backoff_s=1
max_backoff_s=30
# A process that stayed up this long waits min_backoff_s again when it exits: a crash after
# a minute of service is not a crash loop.
stable_s=60
nats_slot="" # the slot of the nats-server run.sh started (stopped last); empty with --nats-url

# add NAME COMMAND...: a new slot running COMMAND (not started yet).
add() {
  local command
  printf -v command '%q ' "${@:2}"
  names+=("$1")
  commands+=("$command")
  pids+=("")
  timers+=("")
  backoffs+=("$min_backoff_s")
  started+=(0)
}

# launch SLOT: starts the slot's command in the background.
launch() {
  eval "${commands[$1]} &"
  pids[$1]=$!
  started[$1]=$SECONDS
}

# reap SLOT: collects the exit status of the slot's process, which has exited, into $how:
# "status 1", or "status 137 (SIGKILL)" for a signal.
how=""
reap() {
  local status=0
  wait "${pids[$1]}" 2>/dev/null || status=$?
  how="status $status"
  if ((status > 128)); then how+=" (SIG$(kill -l $((status - 128))))"; fi
}

# schedule_restart SLOT: the slot's process exited after start-up: logs it and starts the
# timer of its restart.
schedule_restart() {
  local slot=$1 delay
  reap "$slot"
  if ((SECONDS - started[slot] >= stable_s)); then backoffs[slot]=$min_backoff_s; fi
  delay=${backoffs[slot]}
  backoffs[slot]=$((2 * delay < max_backoff_s ? 2 * delay : max_backoff_s))
  echo "run.sh: ${names[slot]} (pid ${pids[slot]}) exited with $how; restarting in ${delay}s" >&2
  sleep "$delay" &
  timers[slot]=$!
}

# supervise: the main loop once the stack is up; only a signal ends it (its trap stops
# everything and exits).
supervise() {
  local slot
  while :; do
    # Returns when a child exits (a process, or the timer of a pending restart) or a
    # signal arrives.
    wait -n || true
    for slot in "${!names[@]}"; do
      if [[ -n ${timers[slot]} ]]; then
        kill -0 "${timers[slot]}" 2>/dev/null && continue
        timers[slot]=""
        launch "$slot"
        echo "run.sh: ${names[slot]} restarted (pid ${pids[slot]})" >&2
      elif ! kill -0 "${pids[slot]}" 2>/dev/null; then
        schedule_restart "$slot"
      fi
    done
  done
}

# stop_all: stops every process run.sh started. It runs from the INT/TERM/EXIT traps, which
# exit run.sh when it returns, so the supervision loop never runs again: nothing restarts
# during shutdown.
# shellcheck disable=SC2317 # called from the traps, which shellcheck does not follow
stop_all() {
  trap - INT TERM EXIT
  echo "run.sh: stopping"
  local nats_pid="" stages=() pid alive
  [[ -z $nats_slot ]] || nats_pid=${pids[nats_slot]}
  # The gateway and the workers first (they drain through NATS), with the timers of pending
  # restarts; `jobs -p` also lists a process started just before the signal, whose pid
  # launch had no time to record.
  for pid in $(jobs -p); do
    [[ $pid == "$nats_pid" ]] || stages+=("$pid")
  done
  if ((${#stages[@]})); then
    kill -TERM "${stages[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      alive=0
      for pid in "${stages[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    kill -KILL "${stages[@]}" 2>/dev/null || true
  fi
  # Then the server, and its store.
  if [[ -n $nats_pid ]]; then
    kill -TERM "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
    rm -rf "$nats_store"
  fi
  wait 2>/dev/null || true
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# NATS identities (--secure): one seed per role in $nats_auth_dir. run.sh writes them (once:
# nats-auth keeps the seeds it finds) when it starts the server itself; an external
# server's operator hands them over.
identity_env=() # identity_env ROLE: sets it to the env(1) arguments of ROLE's identity
identity() {
  identity_env=()
  [[ "$secure" == on ]] || return 0
  local seed="$nats_auth_dir/$1.nk"
  [[ -r "$seed" ]] || { echo "run.sh: no NATS seed $seed for role $1" >&2; exit 2; }
  identity_env=(env "QWEN3_EMBED__NATS__IDENTITY=$1" "QWEN3_EMBED__NATS__NKEY_FILE=$seed")
}
if [[ "$secure" == on ]]; then
  if [[ -z "$nats_url" ]]; then
    nats_auth_dir=${nats_auth_dir:-$repo/target/run/nats-auth}
    # The models after the first of each task work on subjects of their own: their roles
    # may use them too.
    routed_models=()
    for name in "${embed_names[@]:1}"; do routed_models+=(--model "$name"); done
    for name in "${rerank_names[@]:1}"; do routed_models+=(--rerank-model "$name"); done
    "$bin_dir/nats-auth" --out "$nats_auth_dir" "${routed_models[@]}" >/dev/null
    # JetStream and the users nats-auth wrote (an include is read relative to this file).
    printf '# Written by deploy/local/run.sh --secure.\njetstream: enabled\ninclude "auth.conf"\n' \
      >"$nats_auth_dir/nats-server.conf"
  fi
  [[ -d "$nats_auth_dir" ]] || { echo "run.sh: no NATS seed directory $nats_auth_dir (nats-auth --out DIR writes one)" >&2; exit 2; }
  nats_auth_dir=$(cd "$nats_auth_dir" && pwd)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ -z "$nats_url" ]]; then
  nats_port=$(free_port)
  # A restarted nats-server gets the same port and store (file-stored batches survive).
  nats_store=$(mktemp -d)
  nats_slot=${#names[@]}
  nats_args=(-a 127.0.0.1 -p "$nats_port" -js -sd "$nats_store")
  [[ "$secure" == off ]] || nats_args+=(-c "$nats_auth_dir/nats-server.conf")
  add nats-server "$nats_server" "${nats_args[@]}"
  launch "$nats_slot"
  nats_url="nats://127.0.0.1:$nats_port"
  for _ in $(seq 100); do (: >"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
fi

export QWEN3_EMBED_CONFIG_DIR="$config_dir" QWEN3_EMBED_PROFILE="$profile" NATS_URL="$nats_url"
# add_pool TASK INDEX: adds the GPU and tokenizer workers of model INDEX of TASK (embed or
# rerank). The first model of a task works on the default subjects; every further one on
# subjects of its own (QWEN3_EMBED__NATS__MODEL_SUBJECTS), its workers named after it in
# run.sh's lines ("gpu-worker NAME #1").
add_pool() {
  local task=$1 index=$2 dir name label="" role="" task_args=() suffix="" i
  if [[ $task == rerank ]]; then
    dir=${rerank_dirs[index]} name=${rerank_names[index]}
    label="rerank " role="rerank-" task_args=(--task rerank)
  else
    dir=${embed_dirs[index]} name=${embed_names[index]}
  fi
  ((index == 0)) || suffix=" $name"
  worker_env "${role}gpu" "$index"
  for i in $(seq "$gpu_workers"); do
    add "${label}gpu-worker$suffix #$i" "${worker_env[@]}" "$bin_dir/gpu-worker" "${task_args[@]}" \
      --model-dir "$dir" --model-name "$name" --backend "$backend"
  done
  worker_env "${role}tokenizer" "$index"
  for i in $(seq "$tokenizer_workers"); do
    add "${label}tokenizer-worker$suffix #$i" "${worker_env[@]}" "$bin_dir/tokenizer-worker" "${task_args[@]}" \
      --model-dir "$dir" --model-name "$name"
  done
}
# worker_env ROLE INDEX: sets worker_env to the env(1) arguments of a worker of ROLE serving
# model INDEX of its task: its NATS identity (--secure), and its own subjects after the first
# model; empty when it needs neither.
worker_env=()
worker_env() {
  identity "$1"
  worker_env=("${identity_env[@]}")
  if (($2 > 0)); then worker_env=(env QWEN3_EMBED__NATS__MODEL_SUBJECTS=true "${identity_env[@]:1}"); fi
}
# listed NAME...: the names as one line, the first marked as the default.
listed() {
  local line="$1 (default)" name
  for name in "${@:2}"; do line+=", $name"; done
  echo "$line"
}
for index in "${!embed_names[@]}"; do add_pool embed "$index"; done
# The gateway serves the default models by name and finds the others in the workers'
# status answers. The rerankers' pools pull only the rerank streams.
gateway_args=(--host "$host" --port "$port" --model "${embed_names[0]}")
for index in "${!rerank_names[@]}"; do add_pool rerank "$index"; done
if ((${#rerank_names[@]})); then gateway_args+=(--rerank-model "${rerank_names[0]}"); fi
identity gateway
add gateway "${identity_env[@]}" "$bin_dir/gateway" "${gateway_args[@]}"
for slot in "${!names[@]}"; do
  [[ -n ${pids[slot]} ]] || launch "$slot"
done

# Start-up: a process that exits before the stack is healthy stops run.sh. A bad flag, a
# model it cannot load or a port in use fails the same way on every try: better said at
# once than restarted for 5 minutes. Supervision starts once /health answers 200.
case "$host" in
  0.0.0.0 | :: | 127.0.0.1) url="http://127.0.0.1:$port" ;;
  *:*) url="http://[$host]:$port" ;;
  *) url="http://$host:$port" ;;
esac
healthy() {
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$url/health', timeout=1).status == 200 else 1)" 2>/dev/null
}
for _ in $(seq 600); do
  if healthy; then
    echo "run.sh: ready at $url  (OpenAI API: $url/v1/embeddings, seed API: $url/api/v1/embedding/api)"
    echo "run.sh: $tokenizer_workers tokenizer worker(s), $gpu_workers GPU worker(s) per model, backend $backend, NATS $nats_url; Ctrl-C stops"
    if [[ "$secure" == on ]]; then echo "run.sh: NATS identities on: seeds in $nats_auth_dir (operator.nk for nats CLI work, client.nk for external clients)"; fi
    echo "run.sh: embedding models: $(listed "${embed_names[@]}")"
    if ((${#rerank_names[@]})); then echo "run.sh: rerankers: $(listed "${rerank_names[@]}"): $url/v1/rerank, $url/rerank"; fi
    processes=""
    for slot in "${!names[@]}"; do processes+="${names[slot]} (pid ${pids[slot]}), "; done
    echo "run.sh: processes: ${processes%, }; each is restarted when it exits"
    supervise
  fi
  for slot in "${!names[@]}"; do
    if ! kill -0 "${pids[slot]}" 2>/dev/null; then
      reap "$slot"
      echo "run.sh: ${names[slot]} (pid ${pids[slot]}) exited during start-up with $how; stopping" >&2
      exit 1
    fi
  done
  sleep 0.5
done
echo "run.sh: the stack did not become healthy within 5 minutes" >&2
exit 1
