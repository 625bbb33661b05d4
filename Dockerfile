# syntax=docker/dockerfile:1.7
# Targets: `gpu` (default; CUDA runtime, torch CUDA build, optional flash-attn) and `cpu`.
#   docker build -t reranker:gpu .
#   docker build -t reranker:gpu-fa --build-arg FLASH_ATTN=1 .
#   docker build -t reranker:cpu --target cpu .
#   docker build -t reranker:gpu-baked --build-arg BAKE_MODEL=jinaai/jina-reranker-v2-base-multilingual .
# The project is installed by scripts/bootstrap.sh, the same script the README's commands run.

ARG CUDA_DEVEL=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG CPU_BASE=python:3.12-slim-bookworm

# ---- GPU build: torch CUDA build (+ flash-attn, compiled against it, when FLASH_ATTN=1) -------
FROM ${CUDA_DEVEL} AS gpu-build
ARG FLASH_ATTN=0
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY app/ app/
RUN TORCH_BUILD=cuda scripts/bootstrap.sh
RUN if [ "$FLASH_ATTN" = "1" ]; then \
        .venv/bin/pip install ninja packaging wheel && \
        MAX_JOBS=4 .venv/bin/pip install flash-attn --no-build-isolation; \
    fi

# ---- CPU build ------------------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY app/ app/
RUN TORCH_BUILD=cpu scripts/bootstrap.sh

# ---- shared runtime set-up ------------------------------------------------------------------
FROM ${CPU_BASE} AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends curl libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin reranker \
    && mkdir -p /models && chown reranker /models
COPY --from=cpu-build --chown=reranker /app /app
ENV HF_HOME=/models RERANKER_PORT=8080 RERANKER_DEVICE=cpu
ARG BAKE_MODEL=
RUN if [ -n "$BAKE_MODEL" ]; then \
        /app/.venv/bin/python -c "import sys; from app.engine.loading import resolve_model_dir; print(resolve_model_dir(sys.argv[1]))" "$BAKE_MODEL" \
        && chown -R reranker /models; \
    fi
VOLUME /models
USER reranker
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and gets SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["/app/.venv/bin/reranker", "serve"]

FROM ${CUDA_RUNTIME} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 curl libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin reranker \
    && mkdir -p /models && chown reranker /models
COPY --from=gpu-build --chown=reranker /app /app
ENV HF_HOME=/models RERANKER_PORT=8080 RERANKER_DEVICE=auto
ARG BAKE_MODEL=
RUN if [ -n "$BAKE_MODEL" ]; then \
        /app/.venv/bin/python -c "import sys; from app.engine.loading import resolve_model_dir; print(resolve_model_dir(sys.argv[1]))" "$BAKE_MODEL" \
        && chown -R reranker /models; \
    fi
VOLUME /models
USER reranker
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/.venv/bin/reranker", "serve"]
