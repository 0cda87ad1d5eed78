"""Static checks of the deployment files: no Docker, no cluster, no network.

Cross-checks the deploy configs against the code they describe: every metric a dashboard or an
alert queries is exported by service/metrics.py, every GR_ variable is a Settings field, compose
dependencies and profiles are consistent, Kubernetes manifests are all listed in the kustomization
and probe the right endpoints. Tool-based checks (hadolint, promtool, docker-compose,
kubernetes-validate, check-jsonschema) are in test_tools.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from service.metrics import Metrics
from service.settings import Settings

from .promql import grouping_labels, metric_selectors

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gr-serve.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
K8S = DEPLOY / "k8s"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# Series that Prometheus itself adds, queried next to ours.
PROMETHEUS_SERIES = {"up"}
# Labels that scraping or histograms add to every series.
IMPLICIT_LABELS = {"job", "instance", "le", "service", "namespace", "pod"}


# ------------------------------------------------------------------------------------ helpers
def _exported() -> tuple[set[str], dict[str, set[str]]]:
    """Series names the service exports, and the label names of each, from the real registry."""
    metrics = Metrics.create()
    text = generate_latest(metrics.registry).decode()
    families: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            families[m.group(1)] = m.group(2)
    assert families, "generate_latest produced no metric families"
    series: set[str] = set()
    for name, kind in families.items():
        if kind == "counter":
            base = name.removesuffix("_total")
            series |= {base + "_total", base + "_created"}
        elif kind == "histogram":
            series |= {name + "_bucket", name + "_count", name + "_sum", name + "_created"}
        elif kind == "summary":
            series |= {name, name + "_count", name + "_sum", name + "_created"}
        else:
            series.add(name)
    # Label names: declared on the metric objects (labelled metrics with no child yet print no
    # sample, so the exposition text alone cannot tell them).
    labels: dict[str, set[str]] = {}
    for field in metrics.__dataclass_fields__:
        obj = getattr(metrics, field)
        name = getattr(obj, "_name", None)
        if name is None:
            continue
        names = set(getattr(obj, "_labelnames", ()))
        for s in series:
            if s == name or (
                s.startswith(name + "_")
                and s.removeprefix(name + "_") in {"total", "created", "bucket", "count", "sum"}
            ):
                labels.setdefault(s, set()).update(names)
    return series, labels


EXPORTED, LABELS = _exported()
ALL_LABELS = set().union(*LABELS.values()) | IMPLICIT_LABELS


def _check_expr(expr: str, where: str) -> list[str]:
    problems = []
    for name, matcher_labels in metric_selectors(expr):
        if name in PROMETHEUS_SERIES:
            continue
        if name not in EXPORTED:
            problems.append(f"{where}: metric {name!r} is not exported by service/metrics.py")
            continue
        unknown = matcher_labels - LABELS.get(name, set()) - IMPLICIT_LABELS
        if unknown:
            problems.append(f"{where}: {name} has no label(s) {sorted(unknown)}")
    unknown_group = grouping_labels(expr) - ALL_LABELS
    if unknown_group:
        problems.append(f"{where}: grouping by unknown label(s) {sorted(unknown_group)}")
    return problems


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _settings_env_names() -> set[str]:
    return {"GR_" + f.upper() for f in Settings.model_fields}


def test_exported_metric_set_is_what_the_deploy_files_expect():
    # Guards the helper itself: a parsing slip would make every other check vacuous.
    for name in (
        "gr_request_latency_seconds_bucket",
        "gr_stage_latency_seconds_bucket",
        "gr_requests_total",
        "gr_requests_in_flight",
        "gr_invalid_sids_total",
        "gr_ready",
        "gr_beam_width_bucket",
    ):
        assert name in EXPORTED
    assert LABELS["gr_stage_latency_seconds_bucket"] == {"stage"}
    assert LABELS["gr_requests_total"] == {"outcome", "status"}


# ------------------------------------------------------------------------------------ Grafana
def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _targets(dash: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    return out


def test_dashboard_parses_and_has_unique_panel_ids():
    dash = _dashboard()
    assert dash["uid"] == "gr-serve"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert _targets(dash), "dashboard has no queries"


def test_dashboard_queries_use_only_exported_metrics():
    dash = _dashboard()
    problems = []
    for title, expr in _targets(dash):
        problems += _check_expr(expr, f"dashboard panel {title!r}")
    for var in dash.get("templating", {}).get("list", []):
        problems += _check_expr(
            var["definition"].replace("label_values(", "(").split(",")[0] + ")", f"dashboard variable {var['name']}"
        )
    assert not problems, "\n".join(problems)


def test_dashboard_covers_required_panels():
    exprs = " ".join(e for _, e in _targets(_dashboard()))
    for needed in (
        "gr_requests_total",
        "gr_request_latency_seconds_bucket",
        "gr_stage_latency_seconds_bucket",
        "gr_requests_in_flight",
        "gr_invalid_sids_total",
        "gr_beam_width",
    ):
        assert needed in exprs, f"no dashboard panel queries {needed}"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(gr_request_latency_seconds_bucket" in exprs


def test_latency_panel_draws_the_150ms_objective():
    panels = [p for p in _dashboard()["panels"] if "p50 / p95 / p99" in p["title"]]
    assert len(panels) == 1
    defaults = panels[0]["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "line+area", "dashed"}
    assert 0.15 in [s["value"] for s in defaults["thresholds"]["steps"]]


def test_dashboard_datasource_matches_provisioning():
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    for panel in _dashboard()["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] in uids, panel["title"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gr-serve.yml").read_text())
    paths = {p["options"]["path"] for p in provider["providers"]}
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    for path in paths:
        assert path in mounts, f"grafana provider path {path} is not mounted in compose"
        assert (ROOT / mounts[path]).resolve() == DASHBOARD.parent.resolve()


# ------------------------------------------------------------------------------------ Prometheus
def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_use_only_exported_metrics():
    problems = []
    for rule in _rules():
        problems += _check_expr(rule["expr"], f"rule {rule.get('alert') or rule.get('record')}")
    assert not problems, "\n".join(problems)


def test_required_alerts_exist():
    rules = {r["alert"]: r for r in _rules() if "alert" in r}
    p99 = rules["GrServeP99LatencyHigh"]["expr"]
    assert "histogram_quantile(0.99" in p99 and "gr_request_latency_seconds_bucket" in p99
    assert "[5m]" in p99 and re.search(r">\s*0\.150?\b", p99)
    assert "increase(gr_invalid_sids_total" in rules["GrServeInvalidSids"]["expr"]
    assert "gr_ready == 0" in rules["GrServeNotReady"]["expr"]
    assert "up{" in rules["GrServeTargetDown"]["expr"]


def test_every_alert_has_a_runbook_section():
    doc = DEPLOY_DOC.read_text().lower()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    for rule in _rules():
        if "alert" not in rule:
            continue
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/deploy.md#"), runbook
        assert runbook.split("#", 1)[1] in anchors, f"{rule['alert']}: no heading for {runbook}"


def test_prometheus_config_scrapes_the_gateway_and_loads_rules():
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    for rf in cfg["rule_files"]:
        assert (PROM_CONFIG.parent / rf).is_file(), rf
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    # rules.yml's `up`/`absent` alerts select job="gr-serve"
    targets = [t for sc in jobs["gr-serve"]["static_configs"] for t in sc["targets"]]
    assert targets == ["gateway:8000"]


# ------------------------------------------------------------------------------------ compose
def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _depends(svc: dict) -> dict[str, str]:
    dep = svc.get("depends_on", {})
    if isinstance(dep, list):
        return {d: "service_started" for d in dep}
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def test_compose_depends_on_is_consistent():
    services = _compose()["services"]
    for name, svc in services.items():
        profiles = set(svc.get("profiles", []))
        for dep, cond in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            dep_profiles = set(services[dep].get("profiles", []))
            # a dependency must be active whenever the dependent is
            assert not dep_profiles or (profiles and profiles <= dep_profiles), (
                f"{name} (profiles {sorted(profiles)}) depends on {dep} (profiles {sorted(dep_profiles)})"
            )
            if cond == "service_healthy":
                hc = services[dep].get("healthcheck") or {}
                assert hc and not hc.get("disable"), f"{name} waits for {dep} healthy but it has no healthcheck"
            if cond == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is one-shot: restart must be 'no'"
            assert cond in {"service_started", "service_healthy", "service_completed_successfully"}


def test_compose_gateways():
    services = _compose()["services"]
    gateways = {
        n: s for n, s in services.items() if "gateway" in s.get("networks", {}).get("default", {}).get("aliases", [])
    }
    by_profile = {p: n for n, s in gateways.items() for p in s.get("profiles", [])}
    assert set(by_profile) == {"gpu", "cpu"}, by_profile
    for profile, name in by_profile.items():
        svc = services[name]
        deps = _depends(svc)
        assert deps.get("redis") == "service_healthy"
        loaders = [d for d, c in deps.items() if c == "service_completed_successfully"]
        assert len(loaders) == 1, f"{name} must wait for exactly one catalog loader"
        loader = services[loaders[0]]
        assert loader["command"] == ["python", "-m", "service.catalog.load"]
        assert loader["image"] == svc["image"], "loader must run the gateway's image"
        assert svc["build"]["target"] == profile == loader["build"]["target"]
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if profile == "gpu":
            assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
        else:
            assert not devices
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])


def test_compose_redis_never_evicts_catalog_keys_and_keeps_the_change_log():
    redis = _compose()["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"  # the live catalog's changes exist only in Redis
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_locust_is_optional_and_targets_gateway():
    locust = _compose()["services"]["locust"]
    assert locust["profiles"] == ["loadtest"]
    assert "http://gateway:8000" in locust["command"]
    assert "/locustfile.py" in " ".join(locust["command"])


def test_compose_deploy_mounts_exist():
    for name, svc in _compose()["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./deploy"):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"


def test_compose_gr_env_are_settings():
    known = _settings_env_names()
    for name, svc in _compose()["services"].items():
        env = svc.get("environment") or {}
        for key in env:
            if key.startswith("GR_") and name not in {"locust"}:
                assert key in known, f"{name}: {key} is not a Settings field"


# ------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)
    assert {"gpu", "cpu"} <= set(stages)
    assert stages[-1] == "final" and re.search(r"^ARG DEVICE=gpu$", text, re.M), "GPU must be the default"
    assert "/readyz" in text.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and all(u.split(":")[0] not in {"root", "0"} for u in users)
    cpu = text.split("AS builder-cpu", 1)[1].split("\nFROM ", 1)[0]
    assert cpu.index("torch==") < cpu.index(".[cpu]") < cpu.index("pip uninstall -y torchvision torchaudio torchcodec")
    assert '".[gpu]"' in text
    assert "COPY model_repo" in text and "GR_MODEL_REPO=/app/model_repo" in text


def test_dockerignore_keeps_what_the_image_needs():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*"
    for needed in ("!pyproject.toml", "!service/", "!model_repo/"):
        assert needed in lines


# ------------------------------------------------------------------------------------ Kubernetes
def _k8s_objects() -> list[dict]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objs = []
    for res in kust["resources"]:
        objs += _yaml_docs(K8S / res)
    return objs


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    for res in listed:
        assert (K8S / res).is_file(), res
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"not in kustomization: {sorted(on_disk - listed)}"


def _workload(kind: str, name: str) -> dict:
    for o in _k8s_objects():
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    pytest.fail(f"no {kind} {name}")


def test_deployment_probes_and_resources():
    dep = _workload("Deployment", "gr-serve")
    pod = dep["spec"]["template"]["spec"]
    (gw,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in gw, "model load must not be killed by the liveness probe"
    assert gw["resources"]["limits"].get("nvidia.com/gpu") in (1, "1")
    assert gw["resources"]["requests"]["cpu"] and gw["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    init = pod.get("initContainers", [])
    assert any(c.get("args") == ["python", "-m", "service.catalog.load"] for c in init)


def test_configmap_keys_are_settings():
    known = _settings_env_names()
    cms = [o for o in _k8s_objects() if o["kind"] == "ConfigMap"]
    assert cms
    for cm in cms:
        for key in cm["data"]:
            if key.startswith("GR_"):
                assert key in known, f"ConfigMap {cm['metadata']['name']}: {key} is not a Settings field"
    # ... and the pods get them.
    dep = _workload("Deployment", "gr-serve")
    refs = [
        e["configMapRef"]["name"] for c in dep["spec"]["template"]["spec"]["containers"] for e in c.get("envFrom", [])
    ]
    assert refs and all(r in {cm["metadata"]["name"] for cm in cms} for r in refs)


def test_hpa_scales_the_deployment_on_an_exported_metric():
    hpa = _workload("HorizontalPodAutoscaler", "gr-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gr-serve"}
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and all(m in EXPORTED for m in pod_metrics)


def test_service_selects_the_deployment_pods():
    dep = _workload("Deployment", "gr-serve")
    svc = _workload("Service", "gr-serve")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


# ------------------------------------------------------------------------------------ restarts (RELIABILITY.md)
def test_every_layer_restarts_a_gateway_that_exits_non_zero():
    """The gateway exits 75 when its engine core dies; each supervisor must start it again."""
    for name, svc in _compose()["services"].items():
        if "gateway" in svc.get("networks", {}).get("default", {}).get("aliases", []):
            assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, name
    pod = _workload("Deployment", "gr-serve")["spec"]["template"]["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"
    text = DOCKERFILE.read_text()
    # tini as PID 1 passes the gateway's exit status on, so the container exits with it
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]$', text, re.M)
    from service.app import EXIT_ENGINE_DEAD
    from service.stack import main as stack_main

    assert EXIT_ENGINE_DEAD != 0 and stack_main.__module__ == "service.stack"
    assert "--restart" in (ROOT / "service" / "stack.py").read_text()


def test_hpa_target_is_below_the_admission_bound():
    """Pods refuse work past GR_MAX_CONCURRENT_BEAMS; the HPA must scale before that, not after."""
    (cm,) = [o for o in _k8s_objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "gr-serve-config"]
    settings = Settings(**{k[3:].lower(): v for k, v in cm["data"].items() if k.startswith("GR_")})
    queries = settings.max_concurrent_beams / settings.default_beam_width
    hpa = _workload("HorizontalPodAutoscaler", "gr-serve")
    (target,) = [
        float(m["pods"]["target"]["averageValue"])
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods" and m["pods"]["metric"]["name"] == "gr_requests_in_flight"
    ]
    assert settings.max_concurrent_beams == 0 or target <= 0.8 * queries, (target, queries)
