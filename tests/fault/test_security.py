"""Security, end to end: a redis-server with a password and TLS only (a throwaway CA made with openssl here),
bearer keys from a secret file and from settings, /metrics protected; no secret in logs, errors or metrics."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from service.localproc import RedisProcess, free_port
from tests.gateway import REPO_ROOT, Gateway, gateway_env, start_gateway, stop_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

REDIS_PASSWORD = "redis-pw-Zq81x"  # throwaway, for this test's private redis-server
FILE_KEY, ENV_KEY = "file-key-7Hk2", "env-key-Qp4m"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(d: Path) -> None:
    """A CA, and a server certificate for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=gr-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-extfile", "san.ext", "-out", "server.crt", cwd=d)


@dataclass
class TlsRedis:
    port: int
    proc: subprocess.Popen[bytes]
    ca: Path

    @property
    def url(self) -> str:
        return f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    d = tmp_path_factory.mktemp("tls")
    _make_certs(d)
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD,
         "--dir", str(d)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = TlsRedis(port, proc, d / "ca.crt")
    client = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "redis-server refused the TLS options (built without TLS?)"
        try:
            assert client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    yield server
    proc.terminate()
    proc.wait(10)


def test_redis_needs_the_password_and_tls(tls_redis: TlsRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(tls_redis.url.replace(f":{REDIS_PASSWORD}@", ":wrong@")).ping()
    with pytest.raises(redis.ConnectionError):  # plain TCP to the TLS port
        redis.Redis(port=tls_redis.port, password=REDIS_PASSWORD, socket_timeout=2).ping()


@pytest.fixture(scope="module")
def secure_gateway(synthetic_root: Path, tls_redis: TlsRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    Gateway
]:
    d = tmp_path_factory.mktemp("secure")
    keyfile = d / "api-keys"
    keyfile.write_text(f"# gr-serve API keys\n{FILE_KEY}\n\n")
    # the loader first, with the same URL: it must work over TLS and never print the password
    env = gateway_env(synthetic_root, "synthetic", tls_redis.url)
    loader = subprocess.run([sys.executable, "-m", "service.catalog.load"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert loader.returncode == 0, loader.stdout + loader.stderr
    assert REDIS_PASSWORD not in loader.stdout + loader.stderr and "rediss://:***@127.0.0.1" in loader.stdout
    placeholder = RedisProcess(tls_redis.port, d)  # (start_gateway's record of Redis; not started by us)
    gw = start_gateway(
        synthetic_root, "synthetic", placeholder, d,
        GR_REDIS_URL=tls_redis.url, GR_API_KEYS_FILE=str(keyfile), GR_API_KEYS=f'["{ENV_KEY}"]',
        GR_METRICS_AUTH="true",
    )
    yield gw
    stop_gateway(gw)


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_stay_open(secure_gateway: Gateway, path: str) -> None:
    assert httpx.get(f"{secure_gateway.base}{path}", timeout=10).status_code == 200  # ready: TLS + password work


@pytest.mark.parametrize(
    "headers",
    [{}, _bearer("wrong"), _bearer(FILE_KEY + "x"), _bearer(FILE_KEY[:-1]), {"authorization": FILE_KEY},
     {"authorization": f"Basic {FILE_KEY}"}, {"authorization": "Bearer"}],
    ids=["none", "wrong", "longer", "prefix", "no-scheme", "basic", "empty"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/retrieve"), ("GET", "/metrics"), ("GET", "/openapi.json")])
def test_missing_or_wrong_keys_get_401(secure_gateway: Gateway, headers: dict, method: str, path: str) -> None:
    r = httpx.request(method, f"{secure_gateway.base}{path}", json={"query": "peta"}, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "unauthorized", "message": "missing or invalid bearer token", "field": None}}
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", [FILE_KEY, ENV_KEY])
def test_each_key_is_accepted(secure_gateway: Gateway, key: str) -> None:
    r = httpx.post(f"{secure_gateway.base}/retrieve", json={"query": "peta", "top_k": 3}, headers=_bearer(key),
                   timeout=30)
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    m = httpx.get(f"{secure_gateway.base}/metrics", headers=_bearer(key), timeout=10)
    assert m.status_code == 200 and 'gr_requests_total{outcome="unauthorized",status="401"}' in m.text


def test_no_secret_in_logs_errors_or_metrics(secure_gateway: Gateway) -> None:
    metrics = httpx.get(f"{secure_gateway.base}/metrics", headers=_bearer(ENV_KEY), timeout=10).text
    ready = httpx.get(f"{secure_gateway.base}/readyz", timeout=10).text
    log = secure_gateway.log.read_text(errors="replace")
    for secret in (REDIS_PASSWORD, FILE_KEY, ENV_KEY):
        assert secret not in log and secret not in metrics and secret not in ready
