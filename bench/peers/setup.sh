#!/usr/bin/env bash
# Installs the peer systems of the serving benchmark from their public packages, pinned, into
# virtual environments in the repository (ignored by git):
#   .venv-ray       Ray Serve + sentence-transformers + transformers + torch (CPU): the seed's
#                   stack (bench/peers/ray_serve_app.py); also matplotlib for bench/report.py
#                   and numpy/safetensors for ../shared/tools/make-random-qwen3.py
#   .venv-infinity  infinity-emb (server + torch engine) with the versions it accepts
#                   (sentence-transformers < 4, numpy < 2, so transformers 4.x)
# torch comes from the PyTorch CPU index when it answers, else from PyPI (the PyPI wheel is
# the CUDA build; it runs on the CPU all the same, only larger). Idempotent: a venv whose
# pins are already installed is left alone.
#
#   bench/peers/setup.sh [ray|infinity]...     (default: both)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

python=${PYTHON:-python3}
torch_version=2.15.0
ray_pins=("ray[serve]==2.60.0" "sentence-transformers==6.2.0" "transformers==5.24.0"
  "matplotlib==3.11.2" "numpy" "safetensors")
infinity_pins=("infinity-emb[server,torch]==0.0.78" "sentence-transformers==3.4.1"
  "transformers==4.57.6")

cpu_index=https://download.pytorch.org/whl/cpu
torch_from=()
if curl -fsS --max-time 10 -o /dev/null "$cpu_index/torch/" 2>/dev/null; then
  torch_from=(--index-url "$cpu_index")
fi

install() { # venv pins...
  local venv=$1
  shift
  local stamp="$venv/.bench-pins"
  local want="torch==$torch_version $*"
  if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup.sh: $venv is up to date"
    return
  fi
  echo "setup.sh: installing into $venv: $want"
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${torch_from[@]}" "torch==$torch_version"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==$torch_version" "$@"
  echo "$want" >"$stamp"
}

targets=("$@")
((${#targets[@]})) || targets=(ray infinity)
for target in "${targets[@]}"; do
  case "$target" in
    ray) install .venv-ray "${ray_pins[@]}" ;;
    infinity) install .venv-infinity "${infinity_pins[@]}" ;;
    *) echo "setup.sh: unknown target $target (ray or infinity)" >&2; exit 2 ;;
  esac
done
