# syntax=docker/dockerfile:1.7
# Targets: `gpu` (default; torch CUDA build, optional flash-attn) and `cpu`.
#   docker build -t reranker:gpu .
#   docker build -t reranker:gpu-fa --build-arg FLASH_ATTN=1 .
#   docker build -t reranker:gpu-cu126 --build-arg CUDA_VERSION=12.6.3 .   # older drivers
#   docker build -t reranker:cpu --target cpu .
#   docker build -t reranker:gpu-baked --build-arg BAKE_MODEL=jinaai/jina-reranker-v2-base-multilingual .
# The project is installed by scripts/bootstrap.sh, the same script the README's commands run;
# the GPU build puts the matching torch CUDA build in the venv first, which bootstrap keeps.
# Checked by tests/integration/test_deploy.py (hadolint, and the parsed instructions).

# The one CUDA version of the GPU image: the build stage's toolkit (nvcc, for flash-attn), the
# runtime base, and the torch wheel, which comes from the PyTorch index of the same CUDA
# major.minor (13.0.2 -> https://download.pytorch.org/whl/cu130). torch 2.13.0 is published for
# cu126 and cu130 (stable) and cu132 (experimental); the PyPI `torch==2.13.0` wheel is the cu130
# build. That index was not reachable from where this file was written; the pairs are the ones
# PyTorch's release compatibility matrix lists for 2.13. The driver each needs:
# docs/deployment.md, "Docker on a GPU host".
ARG CUDA_VERSION=13.0.2
ARG UBUNTU=ubuntu24.04
ARG CPU_BASE=python:3.12-slim-bookworm

# ---- GPU build: torch CUDA build (+ flash-attn, compiled against it, when FLASH_ATTN=1) -------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS gpu-build
ARG CUDA_VERSION
ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# Package versions are not pinned: the base image is pinned by tag, and Ubuntu's archive drops
# superseded versions, so a pinned `apt-get install` stops building within weeks.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY app/ app/
# The wheel must be built for this CUDA (torch's extension build refuses an nvcc of another major
# version, and a mismatched runtime is what the base image's driver check guards); fail here, not
# at the first request, if it is not.
RUN cu="cu$(echo "$CUDA_VERSION" | cut -d. -f1,2 | tr -d .)" \
    && python3 -m venv .venv \
    && .venv/bin/pip install --index-url "https://download.pytorch.org/whl/${cu}" \
        "torch==${TORCH_VERSION}+${cu}" \
    && .venv/bin/python -c 'import sys, torch; want = ".".join(sys.argv[1].split(".")[:2]); \
assert torch.version.cuda == want, f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, not {want}"' \
        "$CUDA_VERSION"
# The CPU attention kernel too, for a GPU image started on a host without a GPU.
RUN TORCH_BUILD=cuda scripts/bootstrap.sh \
    && RERANKER_KERNEL_CACHE=/app/kernels .venv/bin/python -m app.engine.cpu_kernel

# flash-attn 2 runs on Ampere and newer. One kernel build per listed architecture: sm_80 code
# also runs on 8.6/8.9 (A10, L4, RTX 30/40), 9.0 is Hopper, 10.0/12.0 Blackwell; the CUDA 12.6
# toolkit builds 8.0 and 9.0 only. Compiling all four takes about an hour with MAX_JOBS=4, and
# each job (with flash-attn's 4 nvcc threads) peaks near 9 GB of memory: lower MAX_JOBS on a
# smaller build host. FLASH_ATTENTION_FORCE_BUILD: compile against this torch rather than
# download a release wheel guessed from its version.
ARG FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0;12.0"
ARG MAX_JOBS=4
RUN if [ "$FLASH_ATTN" = "1" ]; then \
        .venv/bin/pip install ninja==1.13.2 packaging==26.3 psutil==7.2.2 wheel==0.48.0 \
        && FLASH_ATTN_CUDA_ARCHS="$(echo "$TORCH_CUDA_ARCH_LIST" | tr -d .)" \
           FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS="$MAX_JOBS" \
           TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" \
           .venv/bin/pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}" \
        && .venv/bin/python -c 'import flash_attn; print("flash-attn", flash_attn.__version__)'; \
    fi

# ---- CPU build ------------------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc builds the CPU attention kernel (app/engine/cpu_kernel.py) here; the runtime image has no
# compiler and loads it from /app/kernels. Unpinned apt packages: see gpu-build.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY app/ app/
RUN TORCH_BUILD=cpu scripts/bootstrap.sh \
    && RERANKER_KERNEL_CACHE=/app/kernels .venv/bin/python -m app.engine.cpu_kernel

# ---- CPU runtime ----------------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu
# Unpinned apt packages: see gpu-build.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends curl libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 reranker \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin reranker \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=cpu-build --chown=10001:10001 /app /app
ENV HF_HOME=/models RERANKER_PORT=8080 RERANKER_DEVICE=cpu RERANKER_KERNEL_CACHE=/app/kernels
ARG BAKE_MODEL=
RUN if [ -n "$BAKE_MODEL" ]; then \
        /app/.venv/bin/python -c "import sys; from app.engine.loading import resolve_model_dir; print(resolve_model_dir(sys.argv[1]))" "$BAKE_MODEL" \
        && chown -R 10001:10001 /models; \
    fi
VOLUME /models
USER 10001:10001
WORKDIR /app
EXPOSE 8080
# The port is read when the check runs, so `-e RERANKER_PORT=...` moves the check with the server.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${RERANKER_PORT}/ready\" || exit 1"]
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and gets SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["/app/.venv/bin/reranker", "serve"]

# ---- GPU runtime (the default target) -------------------------------------------------------
# The CUDA `base` image, not `runtime`/`cudnn-runtime`: the torch wheel brings its own CUDA
# runtime, cuBLAS, cuDNN and NCCL as pip packages, so the gigabytes of those libraries in the
# bigger images were a second, unused copy. `base` adds only libcudart and the compat package to
# Ubuntu, and over plain Ubuntu it brings what the NVIDIA container runtime reads from the image:
# NVIDIA_REQUIRE_CUDA (a driver too old for this CUDA refuses to start the container, naming the
# driver it needs, instead of torch failing later) and NVIDIA_VISIBLE_DEVICES /
# NVIDIA_DRIVER_CAPABILITIES. Same Ubuntu as the build stage, so the copied venv finds the same
# /usr/bin/python3.
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# Unpinned apt packages: see gpu-build. Ubuntu 24.04 names tcmalloc libtcmalloc-minimal4t64.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 curl libtcmalloc-minimal4t64 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 reranker \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin reranker \
    && mkdir -p /models && chown 10001:10001 /models
COPY --from=gpu-build --chown=10001:10001 /app /app
# cuda, not auto: on a host whose driver is too old for the wheel's CUDA, the container stops
# with one line naming both, instead of serving from the CPU. Mixed fleets: RERANKER_DEVICE=auto.
ENV HF_HOME=/models RERANKER_PORT=8080 RERANKER_DEVICE=cuda RERANKER_KERNEL_CACHE=/app/kernels
ARG BAKE_MODEL=
RUN if [ -n "$BAKE_MODEL" ]; then \
        /app/.venv/bin/python -c "import sys; from app.engine.loading import resolve_model_dir; print(resolve_model_dir(sys.argv[1]))" "$BAKE_MODEL" \
        && chown -R 10001:10001 /models; \
    fi
VOLUME /models
USER 10001:10001
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${RERANKER_PORT}/ready\" || exit 1"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/.venv/bin/reranker", "serve"]
