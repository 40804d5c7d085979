# syntax=docker/dockerfile:1.7
#
# CUDA image of the qwen3-embed GPU worker (bf16 on an NVIDIA GPU).
#
#   docker build -f deploy/containers/cuda.Dockerfile -t qwen3-embed/gpu-worker-cuda .
#
# The worker dlopens, at start-up:
#   * libcuda.so.1 (the driver): NOT in the image; the NVIDIA Container Toolkit mounts the
#     host's driver into the container (`--gpus`, compose `driver: nvidia`, k8s device plugin);
#   * libnvrtc.so.13 (+ libnvrtc-builtins.so.13), libcublas.so.13 and libcublasLt.so.13:
#     provided by the `-runtime-` flavour of nvidia/cuda (its cuda-libraries package set
#     holds NVRTC and cuBLAS). The smaller `-base-` flavour has only cudart and would fail
#     with "libnvrtc.so.13 missing"; `-devel-` works too but is several GB larger.
# No CUDA header is needed: the kernels are compiled by NVRTC from sources built into the
# binary, so the builder is a plain Rust image (cudarc loads every CUDA library dynamically).
# The CUDA 13 runtime needs a host driver of the R580 series or newer.
#
# Run from the repository root; cuda.Dockerfile.dockerignore trims the build context.
# The model is never baked in: mount it read-only at /models/model.

ARG RUST_VERSION=1.95
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---- builder: Debian bookworm (glibc 2.36) so the binary runs on Ubuntu 24.04 (2.39) ----
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gpu-worker \
 && mkdir -p /out \
 && cp target/release/gpu-worker /out/ \
 && strip /out/gpu-worker

# ---- runtime: NVIDIA's CUDA 13.0 runtime (NVRTC + cuBLAS), numeric non-root user -------
FROM ${CUDA_IMAGE} AS gpu-worker-cuda
LABEL io.qwen3-embed.image="qwen3-embed/gpu-worker-cuda" \
      org.opencontainers.image.title="qwen3-embed gpu-worker (CUDA backend)" \
      org.opencontainers.image.description="Model worker of the Qwen3 embedding service, CUDA 13 bf16 backend"
RUN groupadd --system --gid 10001 qwen3 \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin qwen3
COPY --from=builder /out/gpu-worker /usr/local/bin/gpu-worker
COPY deploy/config /etc/qwen3-embed
# The CUDA libraries are in the ld.so cache already; the explicit path keeps dlopen working
# if a platform overrides LD_LIBRARY_PATH with only the driver directories.
ENV LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    QWEN3_EMBED_CONFIG_DIR=/etc/qwen3-embed \
    QWEN3_EMBED_PROFILE=production \
    QWEN3_EMBED_MODEL_DIR=/models/model \
    NATS_URL=nats://nats:4222
USER 10001:10001
WORKDIR /tmp
STOPSIGNAL SIGTERM
# `--device N` (CUDA ordinal) and other flags are appended by compose/k8s/docker run.
ENTRYPOINT ["/usr/local/bin/gpu-worker", "--backend", "cuda"]
