#!/usr/bin/env bash
# Regenerates deploy/k8s/configmap.yaml from deploy/config/default.toml and production.toml
# (the ConfigMap holds them verbatim; tests/tests/deploy_manifests.rs fails when they drift).
#   deploy/k8s/sync-configmap.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
config="$root/deploy/config"
out="$root/deploy/k8s/configmap.yaml"
indent() { sed -e 's/^\(.\)/    \1/' "$1"; }
{
  cat <<'HEADER'
# The production configuration of every stage: deploy/config/default.toml and
# deploy/config/production.toml, verbatim (tests/tests/deploy_manifests.rs fails when they
# drift; regenerate with deploy/k8s/sync-configmap.sh). Mounted read-only at
# /etc/qwen3-embed; the pods set QWEN3_EMBED_CONFIG_DIR to it and QWEN3_EMBED_PROFILE=production.
# Per-Deployment overrides are QWEN3_EMBED__{SECTION}__{KEY} environment variables in the
# Deployments, not edits here.
apiVersion: v1
kind: ConfigMap
metadata:
  name: qwen3-embed-config
  namespace: qwen3-embed
  labels:
    app.kubernetes.io/part-of: qwen3-embed
data:
  default.toml: |
HEADER
  indent "$config/default.toml"
  echo "  production.toml: |"
  indent "$config/production.toml"
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
