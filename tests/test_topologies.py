"""The Redis topologies of tests/support/topologies.py, seen by plain redis-py clients: a cluster spreads keys
over its masters and carries on when one dies or hangs, sentinels name the master and a new one after it
dies, and each topology answers over TLS only."""

from __future__ import annotations

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.support.topologies import HOST, RedisCluster, RedisNode, SentinelGroup
from tests.support.waiting import wait_until

# One key per master: their slots (15495, 3300, 7365) fall in the three ranges redis-cli gives out.
KEYS = ["a", "b", "c"]


def sentinel_client(group: SentinelGroup, **options) -> Sentinel:
    """A redis-py Sentinel for `group`, from its "host:port,..." string, as a user would configure it."""
    addresses = [(host, int(port)) for host, port in (address.split(":") for address in group.sentinels.split(","))]
    return Sentinel(addresses, socket_timeout=2, **options)


def close(sentinel: Sentinel) -> None:
    for client in sentinel.sentinels:
        client.close()


def test_cluster_keys_are_spread_over_the_three_masters(redis_cluster: RedisCluster):
    with redis.cluster.RedisCluster.from_url(redis_cluster.url) as client:
        for key in KEYS:
            client.set(key, f"value of {key}")
        assert [client.get(key) for key in KEYS] == [f"value of {key}".encode() for key in KEYS]
    owners = [redis_cluster.master_for_key(key) for key in KEYS]
    assert {node.port for node in owners} == {node.port for node in redis_cluster.masters()}
    for key, owner in zip(KEYS, owners, strict=True):
        with owner.client() as direct:  # no MOVED: the node named is the one serving the slot
            assert direct.get(key) == f"value of {key}".encode()


def test_cluster_master_killed_its_replica_takes_over(own_topology):
    cluster = own_topology(RedisCluster)
    master = cluster.master_for_key("a")
    replica = cluster.replicas[master][0]
    with redis.cluster.RedisCluster(host=HOST, port=master.port) as client:
        client.set("a", "before")
        with master.client() as direct:
            assert direct.wait(1, 2000) == 1  # the replica has it, so the failover cannot lose it
        cluster.kill(master)
        assert cluster.wait_failover(master) is replica
        assert cluster.master_for_key("a") is replica
        assert client.get("a") == b"before"
        client.set("a", "after")
        assert client.get("a") == b"after"


def test_cluster_master_frozen_is_failed_over_and_rejoins_as_a_replica_when_thawed(own_topology):
    cluster = own_topology(RedisCluster)
    master = cluster.master_for_key("b")
    cluster.freeze(master)
    new = cluster.wait_failover(master)
    cluster.thaw(master)
    wait_until(lambda: master.role() == "slave", "the thawed master following the new one", timeout=15)
    assert cluster.replicas[new] == [master]
    with redis.cluster.RedisCluster.from_url(cluster.url) as client:
        client.set("b", "x")
        assert client.get("b") == b"x"


def test_sentinels_name_the_master(sentinel_group: SentinelGroup):
    sentinel = sentinel_client(sentinel_group)
    assert sentinel.discover_master(sentinel_group.service) == sentinel_group.master()
    with sentinel.master_for(sentinel_group.service) as master:
        master.set("k", "v")
        assert master.get("k") == b"v"
        assert master.wait(1, 2000) == 1
    with sentinel.slave_for(sentinel_group.service) as replica:
        assert replica.get("k") == b"v"
    close(sentinel)


def test_sentinels_promote_the_replica_when_the_master_dies_with_passwords_on_both(own_topology):
    group = own_topology(SentinelGroup, password="redis-secret", sentinel_password="sentinel-secret")
    sentinel = sentinel_client(group, sentinel_kwargs={"password": "sentinel-secret", "socket_timeout": 2}, password="redis-secret")
    with sentinel.master_for(group.service) as master:
        master.set("k", "before")
        assert master.wait(1, 2000) == 1
        old = group.kill_master()
        # Promotion takes the sentinels agreeing with each other, which needs their own password.
        new = group.wait_promoted(old)
        assert new != old
        assert sentinel.discover_master(group.service) == new
        assert master.get("k") == b"before"
        master.set("k", "after")
        assert master.get("k") == b"after"
    close(sentinel)


def test_standalone_server_tls_only(own_topology, redis_tls):
    node = own_topology(RedisNode, tls=redis_tls)
    with redis.Redis(host=HOST, port=node.port, ssl=True, ssl_ca_certs=str(redis_tls.ca)) as client:
        assert client.ping()
    with redis.from_url(node.url) as client:  # the URL names the CA
        assert client.ping()
    once = Retry(NoBackoff(), 0)  # redis-py's default retries take seconds to give up
    with redis.Redis(host=HOST, port=node.port, retry=once) as plain, pytest.raises(redis.ConnectionError):
        plain.ping()
    with redis.Redis(host=HOST, port=node.port, ssl=True, retry=once) as unknown_ca, pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        unknown_ca.ping()


def test_cluster_tls_only(own_topology, redis_tls):
    cluster = own_topology(RedisCluster, tls=redis_tls)
    with redis.cluster.RedisCluster(host=HOST, port=cluster.nodes[0].port, ssl=True, ssl_ca_certs=str(redis_tls.ca)) as client:
        assert client.ping(target_nodes=redis.cluster.RedisCluster.ALL_NODES)
        for key in KEYS:
            client.set(key, key)
        assert [client.get(key) for key in KEYS] == [key.encode() for key in KEYS]


def test_sentinel_group_tls_only(own_topology, redis_tls):
    group = own_topology(SentinelGroup, tls=redis_tls)
    tls = redis_tls.client_options()
    sentinel = sentinel_client(group, sentinel_kwargs=tls, **tls)
    assert all(client.ping() for client in sentinel.sentinels)
    with sentinel.master_for(group.service) as master:
        assert master.ping()
    close(sentinel)
