#!/usr/bin/env bash
# The whole test suite, as CI runs it: environment, deploy tools, lint, types, tests.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
GR_DEPLOY_INSTALL_ONLY=1 bash scripts/validate_deploy.sh
export PATH="$PATH:$(pwd)/.venv/bin"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
python -m pytest -p no:cacheprovider "$@"
