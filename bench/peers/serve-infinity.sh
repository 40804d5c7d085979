#!/usr/bin/env bash
# Serves MODEL_DIR with Infinity (`infinity_emb v2`, its default engine, dtype, batch size and
# device) on 127.0.0.1:PORT, in the foreground; SIGTERM or Ctrl-C stops it. Its routes:
# POST /embeddings (OpenAI shape), GET /health, GET /models.
#
#   bench/peers/serve-infinity.sh MODEL_DIR PORT [more infinity_emb v2 flags]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
(($# >= 2)) || { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
model=$1 port=$2
shift 2
cli="$repo/.venv-infinity/bin/infinity_emb"
[[ -x $cli ]] || { echo "serve-infinity.sh: run bench/peers/setup.sh infinity first" >&2; exit 1; }
# No telemetry and no Hub look-ups: the model is a local directory.
export INFINITY_ANONYMOUS_USAGE_STATS=0 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
exec "$cli" v2 --model-id "$model" --host 127.0.0.1 --port "$port" "$@"
