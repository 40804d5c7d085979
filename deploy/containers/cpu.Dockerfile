# syntax=docker/dockerfile:1.7
#
# CPU image of qwen3-embed: the gateway, the tokenizer worker and the GPU worker on its CPU
# backend (exact f32; for machines without an NVIDIA GPU, CI and development).
# One Dockerfile, one final stage per binary, each with its own ENTRYPOINT:
#
#   docker build -f deploy/containers/cpu.Dockerfile --target gateway          -t qwen3-embed/gateway .
#   docker build -f deploy/containers/cpu.Dockerfile --target tokenizer-worker -t qwen3-embed/tokenizer-worker .
#   docker build -f deploy/containers/cpu.Dockerfile --target gpu-worker-cpu   -t qwen3-embed/gpu-worker-cpu .
#   docker build -f deploy/containers/cpu.Dockerfile --target nats-auth        -t qwen3-embed/nats-auth .
#
# Run from the repository root (the build context); cpu.Dockerfile.dockerignore keeps
# target/, .venv*/ and models out of the context. The `io.qwen3-embed.image` label of each
# final stage is the image name compose.yaml and deploy/k8s/ use (tests/tests/deploy_manifests.rs
# checks they agree). The model is never baked in: mount it read-only at /models/model.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- builder: the release binaries, with the locked dependency versions ----------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binaries are copied
# out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gateway --bin tokenizer-worker --bin gpu-worker \
      --bin nats-auth \
 && mkdir -p /out \
 && cp target/release/gateway target/release/tokenizer-worker target/release/gpu-worker \
      target/release/nats-auth /out/ \
 && strip /out/*

# ---- runtime: Debian slim, a numeric non-root user, the shipped configuration ----------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl serves the gateway's HEALTHCHECK; ca-certificates lets the binaries verify NATS TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 qwen3 \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin qwen3 \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/qwen3-embed/nats-auth
COPY deploy/config /etc/qwen3-embed
ENV QWEN3_EMBED_CONFIG_DIR=/etc/qwen3-embed \
    QWEN3_EMBED_PROFILE=production \
    QWEN3_EMBED_MODEL_DIR=/models/model \
    NATS_URL=nats://nats:4222
USER 10001:10001
WORKDIR /home/qwen3

# ---- gateway: HTTP on 4008 (the [gateway] port of deploy/config/default.toml) ----------
FROM runtime AS gateway
LABEL io.qwen3-embed.image="qwen3-embed/gateway" \
      org.opencontainers.image.title="qwen3-embed gateway" \
      org.opencontainers.image.description="HTTP gateway of the Qwen3 embedding service"
COPY --from=builder /out/gateway /usr/local/bin/gateway
EXPOSE 4008
# /health answers 200 once a tokenizer worker and a GPU worker with the model loaded answer
# discovery, 503 before that: "unhealthy" means "cannot serve embeddings yet".
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:4008/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]

# ---- tokenizer-worker: no port; talks only to NATS ------------------------------------
FROM runtime AS tokenizer-worker
LABEL io.qwen3-embed.image="qwen3-embed/tokenizer-worker" \
      org.opencontainers.image.title="qwen3-embed tokenizer-worker" \
      org.opencontainers.image.description="Tokenizer worker of the Qwen3 embedding service"
COPY --from=builder /out/tokenizer-worker /usr/local/bin/tokenizer-worker
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tokenizer-worker"]

# ---- gpu-worker-cpu: the model on the CPU backend (the CUDA image is cuda.Dockerfile) --
FROM runtime AS gpu-worker-cpu
LABEL io.qwen3-embed.image="qwen3-embed/gpu-worker-cpu" \
      org.opencontainers.image.title="qwen3-embed gpu-worker (CPU backend)" \
      org.opencontainers.image.description="Model worker of the Qwen3 embedding service, f32 CPU backend"
COPY --from=builder /out/gpu-worker /usr/local/bin/gpu-worker
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gpu-worker", "--backend", "cpu"]

# ---- nats-auth: writes the NATS identities (auth.conf + one NKey seed per role) --------
# Run once into a volume mounted at /var/lib/qwen3-embed/nats-auth (owned by the image's
# user, so a fresh Docker volume is too); existing seeds are kept (docs/operations.md,
# "Security").
FROM runtime AS nats-auth
LABEL io.qwen3-embed.image="qwen3-embed/nats-auth" \
      org.opencontainers.image.title="qwen3-embed nats-auth" \
      org.opencontainers.image.description="NATS identities and permissions of the Qwen3 embedding service"
COPY --from=builder /out/nats-auth /usr/local/bin/nats-auth
ENTRYPOINT ["/usr/local/bin/nats-auth"]
CMD ["--out", "/var/lib/qwen3-embed/nats-auth"]
