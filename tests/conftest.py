"""Fixtures: real redis-server processes started by the suite on free ports (standalone, and the cluster,
sentinel and TLS topologies of tests/support/topologies.py), the test settings, and the app started
in-process (make_client, client). The helpers behind them live in tests/support/,
which test files import."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.cluster
from starlette.testclient import TestClient

from gql.app import create_app
from gql.config import Settings
from tests.support.browser import Chromium
from tests.support.caches import CacheFactory
from tests.support.http import ADMIN_TOKEN
from tests.support.servers import RedisServer
from tests.support.settings import with_settings
from tests.support.topologies import RedisCluster, Running, SentinelGroup, Tls, subscribers

R = TypeVar("R", bound=Running)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the whole run; tests keep apart by using their own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    """The system Chromium for a test file's pages (tests/support/browser.py), launched on first use."""
    browser = Chromium()
    yield browser
    browser.close()


@pytest.fixture
async def make_cache() -> AsyncIterator[CacheFactory]:
    """Result caches on a real Redis (see CacheFactory), every one closed at teardown, even when the test fails."""
    factory = CacheFactory()
    yield factory
    await factory.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for one test alone, for tests that stop or freeze it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for TLS-only Redis; clients need only `redis_tls.ca`."""
    return Tls.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster (three masters, three replicas) for a test file's tests, which must not kill or freeze its nodes."""
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels for a test file's tests, which must not kill or freeze them."""
    with SentinelGroup(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@dataclass(frozen=True)
class SharedRedis:
    """A Redis that servers share, in one of the modes of GQL_REDIS_MODE: its URL and the settings that name the
    mode, a client, and its live nodes."""

    mode: str
    url: str
    env: dict[str, str]
    client: Callable[[], Any]
    nodes: Callable[[], list[RedisServer]]

    def subscribers(self, channel: str) -> int:
        return subscribers(self.nodes(), channel)

    def keys(self, pattern: str) -> list[Any]:
        """KEYS over the whole keyspace (a cluster client asks one node unless told to ask every master)."""
        with self.client() as client:
            if isinstance(client, redis.cluster.RedisCluster):
                return client.keys(pattern, target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            return client.keys(pattern)


@pytest.fixture(params=["standalone", "cluster", "sentinel"])
def shared_redis(request: pytest.FixtureRequest, redis_server: RedisServer) -> SharedRedis:
    """The suite's Redis, the module's Redis Cluster, then its Sentinel group: cache behaviours that hold in every mode."""
    if request.param == "standalone":
        return SharedRedis("standalone", redis_server.url, {}, redis_server.client, lambda: [redis_server])
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return SharedRedis(
            "cluster", cluster.url, {"GQL_REDIS_MODE": "cluster"}, lambda: redis.cluster.RedisCluster.from_url(cluster.url),
            lambda: [node for node in cluster.nodes if node.live],
        )
    group: SentinelGroup = request.getfixturevalue("sentinel_group")
    master = group.node_at(group.master())
    env = {"GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINELS": group.sentinels, "GQL_REDIS_SENTINEL_SERVICE": group.service}
    # REDIS_URL gives only scheme and database: the sentinels name the master.
    return SharedRedis("sentinel", "redis://sentinel-named/0", env, master.client, lambda: [master])


@pytest.fixture
def own_topology(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """`own_topology(RedisCluster, tls=...)`: a topology for one test alone (to kill or freeze nodes of), started;
    every one made is stopped at teardown, whether the test passed or not."""
    numbers = itertools.count()
    with contextlib.ExitStack() as running:

        def start(kind: type[R], **options) -> R:
            topology = kind(tmp_path / f"{kind.__name__.lower()}-{next(numbers)}", **options)
            running.enter_context(topology)
            return topology

        yield start


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        cache_prefix=f"test-{uuid.uuid4().hex[:8]}",
        admin_token=ADMIN_TOKEN,
        redis_retry_seconds=0.2,
        # In-process execution, so tests can look at the server's own counters; tests/test_workers.py
        # and the HTTP tests (tests/test_e2e.py, tests/test_fuzz.py) run the default worker processes.
        query_processes=0,
        # Exact lifetimes (tests/test_cache.py covers jitter and early refresh on their own).
        cache_ttl_jitter=0.0,
        cache_early_refresh=0.0,
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """`make_client(**overrides)`: the app built from `settings` with `overrides`, started (its lifespan
    has run) in a TestClient. Every client made is shut down at teardown, last made first, whether the
    test passed or not. A test that checks what happens at shutdown opens its own TestClient instead.
    """
    with contextlib.ExitStack() as clients:

        def make(**overrides) -> TestClient:
            return clients.enter_context(TestClient(create_app(with_settings(settings, **overrides))))

        yield make


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """The app with the test settings, started."""
    return make_client()


@pytest.fixture(autouse=True)
def _no_environment_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests pass settings explicitly; a developer's GQL_* variables must not change what they see.
    for name in list(os.environ):
        if name.startswith("GQL_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
