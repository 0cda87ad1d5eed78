"""The catalog loader and the lookup against a real 3-master Redis Cluster on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from service.catalog.repo import ModelVersion
from service.catalog.store import CatalogStore, connect
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are required (apt-get install redis-server)")
    ports = [_cluster_port() for _ in range(3)]
    procs = []
    with tempfile.TemporaryDirectory(prefix="gr-cluster-") as d:
        try:
            for port in ports:
                node_dir = Path(d) / str(port)
                node_dir.mkdir()
                procs.append(
                    subprocess.Popen(
                        [
                            binary,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(node_dir),
                            "--loglevel",
                            "warning",
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                )
            for port in ports:
                _wait(lambda p=port: redis.Redis(port=p).ping())
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
            _wait(lambda: all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports))
            yield ports
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is valid and free too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait(check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("Redis Cluster did not come up")
        time.sleep(0.1)


@pytest.fixture
async def cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    client = connect(f"redis://127.0.0.1:{cluster_ports[0]}/0", cluster=True, timeout_s=5, pool_size=8)
    assert isinstance(client, RedisCluster)
    await client.flushall()
    yield client
    await client.aclose()


async def test_load_and_lookup_on_a_cluster(
    cluster: RedisCluster, cluster_ports: list[int], synthetic_version: ModelVersion
) -> None:
    v = synthetic_version
    store = CatalogStore(cluster, v.model, v.catalog_version)
    assert (await store.load(v)).loaded
    assert await store.live_version() == v.catalog_version
    # keys are spread over the slots of all three masters, not pinned to one by a hash tag
    per_node = [redis.Redis(port=p).dbsize() for p in cluster_ports]
    assert sum(per_node) == 2 * v.item_count + 2 and min(per_node) > v.item_count // 3
    sids = [tuple(int(c) for c in row) for row in v.sids[:64]]
    items, hist = await store.lookup(sids, [*v.read_item_ids()[:5], "unknown"])
    assert items == v.read_item_ids()[:64]
    assert hist == [*sids[:5], None]
    assert not (await store.load(v)).loaded  # idempotent: the live marker is there
