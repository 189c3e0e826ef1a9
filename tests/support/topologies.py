"""Real Redis topologies of the suite's own, on free ports in a directory the caller gives: a Redis Cluster
(three masters, three replicas), a Sentinel group (a master, a replica, three sentinels), and TLS-only
variants of those and of a standalone server. Each is a context manager; leaving it, or a failed start,
SIGKILLs every process it started."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis

from tests.support.servers import REDIS_SERVER, RedisServer, free_port

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000  # a cluster node's bus listens 10000 above its client port
T = TypeVar("T")


class NotYet(Exception):
    """What a check waits for has not happened yet; the message says what was seen instead."""


def wait_for(check: Callable[[], T], what: str, timeout: float) -> T:
    """`check()`'s value once it raises neither NotYet nor a Redis error; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (NotYet, redis.RedisError) as exc:
            seen = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s (last seen: {seen})")
        time.sleep(0.05)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def cluster_ports(count: int) -> list[int]:
    """`count` distinct free ports below 65536 - 10000 whose cluster bus ports are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        taken = {*ports, *(p + BUS_OFFSET for p in ports)}
        if port + BUS_OFFSET < 65536 and port not in taken and port + BUS_OFFSET not in taken and _is_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _fields(text: str) -> dict[str, str]:
    """INFO-style "name:value" lines (CLUSTER INFO's reply) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _pairs(reply: Sequence | dict) -> dict[str, Any]:
    """A map reply (CLUSTER SHARDS entries, SENTINEL MASTER) as a dict, whether redis-py made it one or left it flat."""
    if isinstance(reply, dict):
        return {str(key): value for key, value in reply.items()}
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def subscribers(nodes: Iterable[RedisServer], channel: str) -> int:
    """Subscribers of `channel` over `nodes` (on a cluster, each process subscribes at one node of its choice)."""
    total = 0
    for node in nodes:
        with node.client() as client:
            total += client.pubsub_numsub(channel)[0][1]
    return total


@dataclass(frozen=True)
class Tls:
    """A self-signed CA and a server certificate for 127.0.0.1 and localhost that it signed (made with openssl)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, workdir: Path) -> Tls:
        """Make the CA and the server certificate (EC P-256, valid two days) in `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        tls = cls(workdir / "ca.crt", workdir / "server.crt", workdir / "server.key")
        ca_key, csr, ext = workdir / "ca.key", workdir / "server.csr", workdir / "server.ext"
        # Python's ssl (and OpenSSL 3) insist on CA:TRUE and keyCertSign on the CA, and a SAN naming the address.
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl("req", "-x509", *key, "-keyout", ca_key, "-out", tls.ca, "-days", "2", "-subj", "/CN=gql test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        _openssl("req", "-new", *key, "-keyout", tls.key, "-out", csr, "-subj", "/CN=localhost")
        _openssl("x509", "-req", "-in", csr, "-CA", tls.ca, "-CAkey", ca_key, "-set_serial", str(time.time_ns()),
                 "-days", "2", "-extfile", ext, "-out", tls.cert)
        return tls

    def server_config(self) -> list[str]:
        """Directives that make a redis-server speak TLS only, with clients needing nothing but the CA."""
        files = [f"tls-cert-file {_quoted(str(self.cert))}", f"tls-key-file {_quoted(str(self.key))}",
                 f"tls-ca-cert-file {_quoted(str(self.ca))}"]
        return [*files, "tls-auth-clients no", "tls-replication yes"]

    def client_options(self) -> dict[str, Any]:
        """redis-py connection options for a server with `server_config()`."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


def _quoted(value: str) -> str:
    """`value` as one argument of a redis.conf line, whatever spaces, quotes or #s it holds."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _openssl(*args: object) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr}")


class Running:
    """start() on entering a with block, stop() on leaving it, whatever happened inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()


class RedisNode(RedisServer, Running):
    """A redis-server run from a config file of its own in `workdir`: a cluster node, a replica or a sentinel, maybe TLS only."""

    def __init__(self, workdir: Path, port: int | None = None, config: Iterable[str] = (), *, tls: Tls | None = None,
                 password: str | None = None, sentinel: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, port)
        self.tls = tls
        self.password = password
        self.sentinel = sentinel
        self.frozen = False
        self.log = workdir / "redis.log"
        self.config_file = workdir / ("sentinel.conf" if sentinel else "redis.conf")
        listen = ["port 0", f"tls-port {self.port}", *tls.server_config()] if tls else [f"port {self.port}"]
        # No delay before a full sync (5 s by default, waiting for more replicas): replicas are in sync at once.
        persistence = [] if sentinel else ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
        auth = [f"requirepass {_quoted(password)}"] if password else []
        self.config = [f"bind {HOST}", *listen, f"dir {_quoted(str(workdir))}", *persistence, *auth, *config]

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{HOST}:{self.port}/0?ssl_ca_certs={quote(str(self.tls.ca))}"
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def live(self) -> bool:
        """Started, not killed, not frozen: it answers."""
        return self.process is not None and self.process.poll() is None and not self.frozen

    def command(self) -> list[str]:
        assert REDIS_SERVER is not None, "redis-server is not on PATH"
        return [REDIS_SERVER, str(self.config_file), *(["--sentinel"] if self.sentinel else [])]

    def start(self) -> None:
        assert self.process is None, f"node {self.port} is running already"
        # Written once: a sentinel rewrites its file with what it learned, which a restart must keep.
        if not self.config_file.exists():
            self.config_file.write_text("\n".join(self.config) + "\n")
        super().start()

    def stop(self) -> None:
        """SIGKILL (after SIGCONT, should it be frozen)."""
        super().stop()
        self.frozen = False

    def freeze(self) -> None:
        super().freeze()
        self.frozen = True

    def thaw(self) -> None:
        super().thaw()
        self.frozen = False

    def client(self, socket_timeout: float = 2, decode_responses: bool = False) -> redis.Redis:
        tls = self.tls.client_options() if self.tls else {}
        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=socket_timeout,
                           decode_responses=decode_responses, **tls)

    def ask(self, *command: str | int) -> Any:  # replies are shaped by the command
        """One command's raw reply (no redis-py parsing), decoded, on a connection of its own (closed after)."""
        client = self.client(socket_timeout=2, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def role(self) -> str:
        """The first word of ROLE's reply: master, slave or sentinel."""
        return str(self.ask("ROLE")[0])


class RedisCluster(Running):
    """Three masters and three replicas made into a cluster by redis-cli --cluster create."""

    def __init__(self, workdir: Path, tls: Tls | None = None, node_timeout_ms: int = 1000) -> None:
        # A short node timeout, so that a replica takes over a killed master within seconds.
        config = ["cluster-enabled yes", "cluster-config-file nodes.conf", f"cluster-node-timeout {node_timeout_ms}"]
        if tls:
            config.append("tls-cluster yes")
        self.tls = tls
        self.nodes = [RedisNode(workdir / f"node-{port}", port, config, tls=tls) for port in cluster_ports(6)]
        self.ids: dict[str, RedisNode] = {}
        self.replicas: dict[RedisNode, list[RedisNode]] = {}  # each master's, as they were when last looked at

    @property
    def url(self) -> str:
        """The URL of the first live master: where a cluster client starts."""
        return self.masters()[0].url

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._create()
            wait_for(self._ready, "cluster ready", 30)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        done = subprocess.run(["redis-cli", *tls, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self.ids = {str(node.ask("CLUSTER", "MYID")): node for node in self.nodes}

    def _ready(self) -> None:
        replicas: dict[RedisNode, list[RedisNode]] = {}
        for node in self.nodes:
            info = _fields(node.ask("CLUSTER", "INFO"))
            if (info["cluster_state"], int(info["cluster_slots_ok"]), int(info["cluster_known_nodes"])) != ("ok", SLOTS, 6):
                raise NotYet(f"node {node.port}: {info}")
            role = node.ask("ROLE")  # a replica's: "slave", master host, master port, link state, offset
            if role[0] == "slave":
                # A replica that never synced would not take over (its data counts as too old), so wait for the link.
                if role[3] != "connected":
                    raise NotYet(f"replica {node.port} not yet in sync")
                replicas.setdefault(self.node_at(int(role[2])), []).append(node)
        self.replicas = replicas

    def node_at(self, port: int) -> RedisNode:
        """The node listening on `port`."""
        return next(node for node in self.nodes if node.port == port)

    def masters(self) -> list[RedisNode]:
        """The live nodes that are masters now, in the order of `nodes`."""
        return [node for node in self.nodes if node.live and node.role() == "master"]

    def _shards(self) -> list[tuple[list[int], list[dict[str, Any]]]]:
        """CLUSTER SHARDS of the first live node: each shard's slot bounds and its nodes."""
        shards = []
        for entry in map(_pairs, next(node for node in self.nodes if node.live).ask("CLUSTER", "SHARDS")):
            slots = [int(slot) for slot in entry["slots"]]
            shards.append((slots, [_pairs(node) for node in entry["nodes"]]))
        return shards

    def master_for_key(self, key: str) -> RedisNode:
        """The node that serves `key`'s slot, as the cluster says now."""
        any_node = next(node for node in self.nodes if node.live)
        slot = int(any_node.ask("CLUSTER", "KEYSLOT", key))
        for slots, members in self._shards():
            if any(start <= slot <= end for start, end in zip(slots[::2], slots[1::2], strict=True)):
                master = next(member for member in members if member["role"] == "master")
                return self.ids[str(master["id"])]
        raise LookupError(f"no shard serves slot {slot} (of key {key!r})")

    def kill(self, node: RedisNode) -> None:
        """SIGKILL: the node is gone at once, as after a crash."""
        node.stop()

    def freeze(self, node: RedisNode) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        node.freeze()

    def thaw(self, node: RedisNode) -> None:
        node.thaw()

    def wait_failover(self, old_master: RedisNode, timeout: float = 30) -> RedisNode:
        """The replica of `old_master` that took over, once it is master and every other live node has the cluster ok."""
        candidates = self.replicas.get(old_master)
        if not candidates:
            raise ValueError(f"node {old_master.port} is no master with replicas")

        def promoted() -> RedisNode:
            for node in self.nodes:
                if node.live and node is not old_master:
                    state = _fields(node.ask("CLUSTER", "INFO"))["cluster_state"]
                    if state != "ok":
                        raise NotYet(f"cluster_state {state} on node {node.port}")
            new = next((node for node in candidates if node.live and node.role() == "master"), None)
            if new is None:
                raise NotYet(f"no replica of node {old_master.port} is master")
            return new

        new = wait_for(promoted, f"a replica taking over from cluster master {old_master.port}", timeout)
        # The other replicas follow the new master, and so does the old one when it is back.
        self.replicas[new] = [*(node for node in candidates if node is not new), old_master]
        del self.replicas[old_master]
        return new

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup(Running):
    """A master, its replica, and three sentinels watching them (quorum 2) under the service name `service`."""

    def __init__(self, workdir: Path, service: str = "gqlmaster", *, password: str | None = None,
                 sentinel_password: str | None = None, tls: Tls | None = None, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000) -> None:
        self.service = service
        self.tls = tls
        self.password = password
        self.sentinel_password = sentinel_password
        # masterauth on both: either may be the replica after a failover.
        auth = [f"masterauth {_quoted(password)}"] if password else []
        master = RedisNode(workdir / "redis-0", config=auth, tls=tls, password=password)
        replica = RedisNode(workdir / "redis-1", config=[*auth, f"replicaof {HOST} {master.port}"], tls=tls, password=password)
        self.redis_nodes = [master, replica]
        watch = [
            "sentinel resolve-hostnames no",
            f"sentinel monitor {service} {HOST} {master.port} 2",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            # A sentinel's requirepass is also what it authenticates to the others with; auth-pass is for the Redis nodes.
            *([f"sentinel auth-pass {service} {_quoted(password)}"] if password else []),
        ]
        self.sentinel_nodes = [RedisNode(workdir / f"sentinel-{i}", config=watch, tls=tls, password=sentinel_password, sentinel=True)
                               for i in range(3)]

    @property
    def sentinels(self) -> str:
        """The three sentinels' addresses as one string, host:port,host:port,host:port."""
        return ",".join(f"{HOST}:{node.port}" for node in self.sentinel_nodes)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels as redis.sentinel.Sentinel takes them."""
        return [(HOST, node.port) for node in self.sentinel_nodes]

    def start(self) -> None:
        try:
            for node in self.redis_nodes:
                node.start()
            # Sentinels find the replica in the master's INFO; once it is in sync it is listed from their first look.
            wait_for(self._replica_in_sync, "replica in sync", 20)
            for node in self.sentinel_nodes:
                node.start()
            wait_for(self._sentinels_ready, "sentinels know each other and the replica", 30)
        except BaseException:
            self.stop()
            raise

    def _replica_in_sync(self) -> None:
        role = self.redis_nodes[1].ask("ROLE")
        if role[3] != "connected":
            raise NotYet(f"replica: {role}")

    def _sentinels_ready(self) -> None:
        for node in self.sentinel_nodes:
            seen = _pairs(node.ask("SENTINEL", "MASTER", self.service))
            if (seen["num-slaves"], seen["num-other-sentinels"]) != ("1", "2"):
                raise NotYet(f"sentinel {node.port}: {seen['num-slaves']} replicas, {seen['num-other-sentinels']} other sentinels")

    def master(self) -> tuple[str, int]:
        """The master's address as the first live sentinel gives it."""
        return self._master_by(next(node for node in self.sentinel_nodes if node.live))

    def _master_by(self, sentinel: RedisNode) -> tuple[str, int]:
        host, port = sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return str(host), int(port)

    def node_at(self, address: tuple[str, int]) -> RedisNode:
        """The Redis node (master or replica) at `address`."""
        return next(node for node in self.redis_nodes if (HOST, node.port) == address)

    def kill_master(self) -> tuple[str, int]:
        """SIGKILL the master the sentinels name; returns its address."""
        address = self.master()
        self.node_at(address).stop()
        return address

    def wait_promoted(self, old: tuple[str, int], timeout: float = 30) -> tuple[str, int]:
        """The new master's address, once every live sentinel names one other than `old` and it answers as master."""

        def promoted() -> tuple[str, int]:
            named = {self._master_by(node) for node in self.sentinel_nodes if node.live}
            if len(named) != 1 or old in named:
                raise NotYet(f"sentinels name {sorted(named)}")
            address = named.pop()
            if self.node_at(address).role() != "master":
                raise NotYet(f"{address} named but not yet master")
            return address

        return wait_for(promoted, f"sentinels promoting a replica of {old[0]}:{old[1]}", timeout)

    def stop(self) -> None:
        for node in [*self.sentinel_nodes, *self.redis_nodes]:
            node.stop()
