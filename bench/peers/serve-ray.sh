#!/usr/bin/env bash
# Serves MODEL_DIR with the seed's stack (Ray Serve + sentence-transformers, dev profile: one
# replica) on 127.0.0.1:PORT, in the foreground; SIGTERM or Ctrl-C stops it and its private
# Ray cluster. MODEL_DIR must be in the published layout (bench/peers/st_layout.py).
#
#   bench/peers/serve-ray.sh MODEL_DIR PORT [--profile dev|production]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
(($# >= 2)) || { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
model=$1 port=$2
shift 2
python="$repo/.venv-ray/bin/python"
[[ -x $python ]] || { echo "serve-ray.sh: run bench/peers/setup.sh ray first" >&2; exit 1; }
# No usage reporting (this machine reaches no such service; don't wait for it).
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
exec "$python" "$repo/bench/peers/ray_serve_app.py" --model "$model" --port "$port" "$@"
