"""Redis topologies: hit throughput on one server, a Redis Cluster and a Sentinel group; a master killed under load;
the connections and subscriptions each server process holds on every node.

Each topology is the suite's own, on free ports (tests/support/topologies.py: a Cluster of 3 masters and 3 replicas,
cluster-node-timeout 1 s; a master, a replica and 3 sentinels, down-after 1 s; and bench/servers.py's redis-server),
never the machine's Redis. Every measured setup is one `python -m gql serve` (defaults, one uvicorn worker,
GQL_LOG_LEVEL=warning) under a GQL_CACHE_PREFIX of its own.

1. Hit throughput. Per mode (standalone, cluster, sentinel) two servers: defaults, and the field-cache path
   (GQL_RESPONSE_CACHE=false, GQL_QUERY_PROCESSES=0: resolvers in the server, each field a Redis lookup; on a
   Cluster a field hit reads two slots, its generation's and its entry's). Each is warmed with
   `{ yieldThisYear { code yieldPct } }` until the answer is a HIT (for defaults: answered from a stored response,
   by `gql_response_cache_total{outcome="hit"}`), then loaded with `wrk -t1 -c8` for D seconds after an unmeasured
   warm-up second (full: D = 10 s, 3 rounds; quick: 3 s, 1 round), the six setups taking turns in every round.
   Failed: socket errors, timeouts, non-200 answers and answers without data or with GraphQL errors (bench/faults.py's
   wrk script). Ratios: a mode's median over standalone's median of the same path, measured in the same run.
2. Failover, on the Cluster and on the Sentinel group: two servers (defaults, one GQL_CACHE_PREFIX and one
   GQL_ADMIN_TOKEN between them) under five client threads, each POSTing the small query one request at a time,
   alternating between the servers; every 0.5 s a `refreshCache(targets: [YIELD_THIS_YEAR])` mutation to the first
   server; each server's /healthz polled every 50 ms. After a few seconds the master of the slot of the generation
   keys (`<prefix>:generation:{<prefix>}:yieldThisYear`; on Sentinel, the master) is SIGKILLed; the load goes on
   until the replica has taken over, both servers' /healthz say `cache.state` "ok" and a HIT came from a server back
   on Redis, then a few seconds more. Counted: requests, errors (non-200 answers, GraphQL errors, transport errors),
   and refreshes lost: answers to requests sent after a refresh R had returned whose `yieldThisYear` report says it
   was computed before R was sent (`ageSeconds` > received − R.sent + 1 ms of rounding; the servers' clock is this
   machine's). The generation in Redis before the kill and after the failover (a cluster or sentinel client).
3. Connections, after part 1: every node's CLIENT LIST (without replication links, flags S or M, and the bench's
   own connection), each client attributed to the process holding its socket (/proc: the server process and its
   query worker process), and PUBSUB NUMSUB of `<prefix>:filled` on every data node.

    python -m bench.fleet             # full: about 5 minutes; writes bench/results/fleet.md
    python -m bench.fleet --quick     # smoke run: 3 s x 1 round, shorter failover phases; about 1.5 minutes
`make bench` runs it too (bench/run.py, `--fleet full|quick|off`) and links the file from benchmark.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import redis
import redis.cluster
import redis.sentinel

from bench import report
from bench.faults import CHECKED_LUA, Phase, checked_wrk, scrape_metrics
from bench.load import median
from bench.servers import ROOT, RedisProcess, Server, service, started_all
from tests.support.topologies import HOST, RedisCluster, SentinelGroup

RESULTS = ROOT / "bench" / "results"

SMALL = "{ yieldThisYear { code yieldPct } }"
REFRESH = "mutation { refreshCache(targets: [YIELD_THIS_YEAR]) { refreshed { target } } }"
FIELD = "yieldThisYear"
MODES = ("standalone", "cluster", "sentinel")
# The two hit paths of part 1: key -> (title, settings).
PATHS = {
    "response": ("whole-response cache (defaults)", {}),
    "field": ("field cache (GQL_RESPONSE_CACHE=false, GQL_QUERY_PROCESSES=0)",
              {"GQL_RESPONSE_CACHE": "false", "GQL_QUERY_PROCESSES": "0"}),
}
ROUNDING = 0.001  # ageSeconds is given to the millisecond
_JSON = {"content-type": "application/json"}
_RESPONSE_HITS = ("gql_response_cache_total", 'outcome="hit"')


# --- the topologies -----------------------------------------------------------------------------------


@dataclass
class Place:
    """One Redis topology of the run: how servers are pointed at it, and how the bench looks into it."""

    mode: str
    url: str  # REDIS_URL of the servers (in sentinel mode only its scheme and db count)
    env: dict[str, str]
    standalone: RedisProcess | None = None
    cluster: RedisCluster | None = None
    group: SentinelGroup | None = None

    def nodes(self) -> list[tuple[int, str]]:
        """The live nodes as (port, role): master, replica or sentinel."""
        if self.standalone is not None:
            return [(self.standalone.port, "master")]
        if self.cluster is not None:
            return [(n.port, "master" if n.role() == "master" else "replica") for n in self.cluster.nodes if n.live]
        assert self.group is not None
        data = [(n.port, "master" if n.role() == "master" else "replica") for n in self.group.redis_nodes if n.live]
        return data + [(n.port, "sentinel") for n in self.group.sentinel_nodes if n.live]

    def get(self, key: str) -> bytes | None:
        """`key`'s value as a client of this topology reads it (a cluster client, the sentinels' master)."""
        if self.standalone is not None:
            with redis.Redis(host=HOST, port=self.standalone.port, socket_timeout=2) as client:
                return client.get(key)
        if self.cluster is not None:
            live = self.cluster.masters()[0]
            with redis.cluster.RedisCluster(host=HOST, port=live.port, socket_timeout=2) as cluster_client:
                return cluster_client.get(key)
        assert self.group is not None
        sentinel = redis.sentinel.Sentinel(self.group.addresses, socket_timeout=2)
        try:
            with sentinel.master_for(self.group.service, socket_timeout=2) as master:
                return master.get(key)
        finally:
            for client in sentinel.sentinels:
                client.close()

    def kill_master(self, key: str) -> tuple[str, Callable[[], str]]:
        """SIGKILL the master serving `key` (on Sentinel: the master); returns what was killed and a wait for the new one."""
        if self.cluster is not None:
            cluster, old = self.cluster, self.cluster.master_for_key(key)
            cluster.kill(old)
            return f"master {old.port}", lambda: f"replica {cluster.wait_failover(old).port}"
        assert self.group is not None
        group = self.group
        address = group.kill_master()
        return f"master {address[1]}", lambda: f"replica {group.wait_promoted(address)[1]}"


def places(stack: contextlib.ExitStack, workdir: Path) -> dict[str, Place]:
    """The three topologies, started (and stopped when `stack` closes)."""
    store = stack.enter_context(RedisProcess(workdir))
    _log(f"redis-server on port {store.port}; starting a cluster (6 nodes) and a sentinel group (2 + 3)")
    cluster = stack.enter_context(RedisCluster(workdir / "cluster"))
    group = stack.enter_context(SentinelGroup(workdir / "sentinel"))
    master_port = group.master()[1]
    return {
        "standalone": Place("standalone", store.url, {}, standalone=store),
        "cluster": Place("cluster", cluster.url, {"GQL_REDIS_MODE": "cluster"}, cluster=cluster),
        "sentinel": Place("sentinel", f"redis://{HOST}:{master_port}/0",
                          {"GQL_REDIS_MODE": "sentinel", "GQL_REDIS_SENTINELS": group.sentinels,
                           "GQL_REDIS_SENTINEL_SERVICE": group.service}, group=group),
    }


# --- results --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """Every round of one setup of part 1."""

    mode: str
    path: str
    runs: list[Phase] = field(default_factory=list)
    statuses: set[str] = field(default_factory=set)  # of a request after each run

    @property
    def rps(self) -> float:
        return median([r.rps for r in self.runs])

    @property
    def p50_ms(self) -> float:
        return median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return median([r.p99_ms for r in self.runs])

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs)


@dataclass(frozen=True)
class NodeClients:
    """One node's clients after part 1: per setup, per process label (server, query worker), and the rest."""

    mode: str
    port: int
    role: str
    counts: dict[str, dict[str, int]]  # setup path -> process label -> connections
    other: int  # clients of no measured server process (sentinels' links, other setups' servers of no mode here)
    numsub: dict[str, int | None]  # setup path -> PUBSUB NUMSUB of its channel (None on sentinels)


@dataclass(frozen=True)
class Answer:
    server: int
    sent: float  # wall clock, like the servers' ages
    received: float
    error: str | None
    status: str  # of the yieldThisYear report ("-": none)
    age: float | None


@dataclass(frozen=True)
class Refresh:
    sent: float
    returned: float
    error: str | None


@dataclass(frozen=True)
class Poll:
    at: float  # when the answer came
    state: str  # cache.state, or "error: ..."


@dataclass
class Lost:
    answer: Answer
    refresh: Refresh

    @property
    def before_refresh(self) -> float:
        """How long before the refresh was sent the answer's value was computed (s)."""
        assert self.answer.age is not None
        return self.refresh.sent - (self.answer.received - self.answer.age)


@dataclass
class FailoverResult:
    mode: str
    killed: str
    promoted: str
    kill_at: float
    promoted_after: float
    answers: list[Answer]
    refreshes: list[Refresh]
    polls: list[list[Poll]]
    generation_before: int | None
    generation_promoted: int | None  # read right after the replica took over
    generation_after: int | None
    timed_out: bool  # the servers did not get back within the bound

    def recovered_at(self, server: int) -> tuple[float | None, int]:
        """When the server's /healthz said "ok" for good after the kill (the kill itself if it never said otherwise),
        and how many of its polls after the kill did not say "ok"."""
        return _recovered_at(self.polls[server], self.kill_at)

    @property
    def both_ok_after(self) -> float | None:
        times = [self.recovered_at(i)[0] for i in range(len(self.polls))]
        return None if any(t is None for t in times) else max(t for t in times if t is not None) - self.kill_at

    @property
    def first_redis_hit_after(self) -> float | None:
        return _first_redis_hit(self.answers, [self.recovered_at(i)[0] for i in range(len(self.polls))], self.kill_at)

    @property
    def errors(self) -> list[Answer]:
        return [a for a in self.answers if a.error is not None]

    @property
    def lost(self) -> list[Lost]:
        return lost_refreshes(self.answers, self.refreshes)

    def state_at(self, server: int, at: float) -> str:
        """What the server's /healthz said last before `at` ("-": not polled yet)."""
        polls = self.polls[server]
        k = bisect.bisect_right([p.at for p in polls], at) - 1
        return polls[k].state if k >= 0 else "-"

    def phase(self, answer: Answer) -> str:
        ok = self.both_ok_after
        if answer.sent < self.kill_at:
            return "before the kill"
        if ok is None or answer.sent < self.kill_at + ok:
            return "kill → both ok"
        return "after both ok"


@dataclass
class FleetResult:
    cells: list[Cell]
    nodes: list[NodeClients]
    processes: dict[tuple[str, str], dict[str, int]]  # (mode, path) -> process label -> how many
    failovers: list[FailoverResult]
    opts: argparse.Namespace
    logs: dict[str, list[str]]
    elapsed: float = 0.0
    load_before: float = 0.0


# --- the run ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return report.run_standalone("fleet", _parser().parse_args(argv), argv, run, resolve, render)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: 3 s x 1 round, 3 s before and after the kill (unless given)")
    add("--duration", type=float, help="seconds of each measured wrk run (default 10; quick 3)")
    add("--rounds", type=int, help="rounds over the six setups (default 3; quick 1)")
    add("--warmup", type=float, default=1, help="seconds of unmeasured wrk before each run, 0 for none (default 1)")
    add("--connections", type=int, default=8, help="wrk connections (default 8)")
    add("--before", type=float, help="failover: seconds of load before the kill (default 5; quick 3)")
    add("--after", type=float, help="failover: seconds of load once the servers are back (default 5; quick 3)")
    add("--clients", type=int, default=4, help="failover: client threads besides the first (default 4)")
    add("--output", type=Path, default=RESULTS / "fleet.md", help="report file (default bench/results/fleet.md)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The settings, with the quick or full defaults filled in."""
    quick = args.quick
    return argparse.Namespace(
        quick=quick,
        duration=args.duration or (3.0 if quick else 10.0),
        rounds=args.rounds or (1 if quick else 3),
        warmup=args.warmup,
        connections=args.connections,
        before=args.before or (3.0 if quick else 5.0),
        after=args.after or (3.0 if quick else 5.0),
        clients=args.clients,
        refresh_every=0.5,
        poll_every=0.05,
    )


def settings(quick: bool) -> argparse.Namespace:
    """The defaults of a full (or quick) run, for bench/run.py."""
    return resolve(_parser().parse_args(["--quick"] if quick else []))


def run(opts: argparse.Namespace) -> FleetResult:
    """The three parts, on topologies and servers of their own under a temporary directory; all stopped at the end."""
    began, load_before = time.monotonic(), os.getloadavg()[0]
    run_id = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="gql-fleet-"))
    try:
        with contextlib.ExitStack() as stack:
            topologies = places(stack, workdir)
            cells, nodes, processes = hits(topologies, workdir, opts, run_id)
            failovers = [failover(topologies[mode], workdir, opts, run_id) for mode in ("cluster", "sentinel")]
        logs = {path.stem: path.read_text(errors="replace").splitlines() for path in sorted(workdir.glob("*.log"))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return FleetResult(cells, nodes, processes, failovers, opts, logs, time.monotonic() - began, load_before)


def _log(message: str) -> None:
    print(f"[fleet] {message}", file=sys.stderr, flush=True)


def _post(client: httpx2.Client, body: bytes, headers: dict[str, str] | None = None) -> dict:
    response = client.post("/graphql", content=body, headers={**_JSON, **(headers or {})})
    response.raise_for_status()
    return response.json()


def _report_entry(answer: dict) -> dict | None:
    return next((e for e in answer.get("extensions", {}).get("cache", []) if e.get("field") == FIELD), None)


def _status(answer: dict) -> str:
    entry = _report_entry(answer)
    return str(entry["status"]) if entry else "-"


def _until_hit(server: Server, response_cache: bool, seconds: float = 60) -> str:
    """Requests of the small query until one is a HIT (with the response cache: answered from a stored response)."""
    body = json.dumps({"query": SMALL}).encode()
    deadline = time.monotonic() + seconds
    with httpx2.Client(base_url=server.url, timeout=120) as client:
        while True:
            before = scrape_metrics(server.url).get(_RESPONSE_HITS, 0.0) if response_cache else 0.0
            answer = _post(client, body)
            if "errors" in answer:
                raise SystemExit(f"{server.variant.key} answered with errors: {answer['errors']}")
            status = _status(answer)
            stored = not response_cache or scrape_metrics(server.url).get(_RESPONSE_HITS, 0.0) > before
            if status == "HIT" and stored:
                return "HIT (stored response)" if response_cache else "HIT"
            if time.monotonic() > deadline:
                raise SystemExit(f"{server.variant.key}: no HIT within {seconds:g} s (last: {status}, stored response: {stored})")
            time.sleep(0.05)


def _probe(server: Server, response_cache: bool) -> str:
    """What one request gets now: HIT, "HIT (stored response)", or what else."""
    body = json.dumps({"query": SMALL}).encode()
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        before = scrape_metrics(server.url).get(_RESPONSE_HITS, 0.0) if response_cache else 0.0
        answer = _post(client, body)
        status = "error" if "errors" in answer else _status(answer)
        if response_cache and status == "HIT" and scrape_metrics(server.url).get(_RESPONSE_HITS, 0.0) > before:
            return "HIT (stored response)"
        return status


def _pid(server: Server) -> int:
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        return int(client.get("/healthz").json()["process"])


# --- 1. hit throughput, and 3. connections afterwards ------------------------------------------------------------


def hits(topologies: dict[str, Place], workdir: Path, opts: argparse.Namespace, run_id: str) \
        -> tuple[list[Cell], list[NodeClients], dict[tuple[str, str], dict[str, int]]]:
    lua, body = workdir / "fleet.lua", workdir / "small.json"
    lua.write_text(CHECKED_LUA, encoding="utf-8")
    body.write_text(json.dumps({"query": SMALL}), encoding="utf-8")
    env = {"FAULTS_BODIES": str(body)}
    setups = [(mode, path) for mode in MODES for path in PATHS]
    variants = [service(f"hits-{mode}-{path}", f"{mode}, {PATHS[path][0]}", topologies[mode].url, run_id, "HIT",
                        **topologies[mode].env, **PATHS[path][1]) for mode, path in setups]
    with started_all(variants, workdir) as servers:
        by_setup = dict(zip(setups, servers, strict=True))
        cells = {setup: Cell(*setup) for setup in setups}
        for setup, server in by_setup.items():
            cells[setup].statuses.add(_until_hit(server, setup[1] == "response"))
            _log(f"warm {setup[0]:10} {setup[1]:8} at {server.url}: {', '.join(cells[setup].statuses)}")
        for round_no in range(1, opts.rounds + 1):
            for setup, server in by_setup.items():
                url = server.url + "/graphql"
                if opts.warmup > 0:
                    checked_wrk("warmup", "", url, lua, env, opts.connections, opts.warmup)
                phase = checked_wrk(f"{setup[0]}-{setup[1]}", f"{setup[0]} {setup[1]}", url, lua, env, opts.connections, opts.duration)
                cells[setup].runs.append(phase)
                cells[setup].statuses.add(_probe(server, setup[1] == "response"))
                _log(f"round {round_no}/{opts.rounds} {setup[0]:10} {setup[1]:8} {phase.rps:9,.1f} req/s  p50 {phase.p50_ms:6.2f} ms  "
                     f"p99 {phase.p99_ms:6.2f} ms  failed {phase.failed}")
        nodes, processes = [], {}
        for mode, place in topologies.items():
            trees = {path: _process_tree(_pid(by_setup[mode, path])) for path in PATHS}
            for path, tree in trees.items():
                processes[mode, path] = dict(Counter(tree.values()))
            nodes += _node_clients(place, trees, {path: f"bench-{run_id}-hits-{mode}-{path}:filled" for path in PATHS})
    return list(cells.values()), nodes, processes


def _process_tree(pid: int) -> dict[int, str]:
    """The server process and its descendants, each labelled: server, query worker or what its command line says."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = {pid: "server"}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            command = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        tree[child] = ("resource tracker" if "resource_tracker" in command else
                       "query worker" if "spawn_main" in command else "other child")
    return tree


def _sockets() -> dict[int, tuple[int, int]]:
    """Every TCP socket on the machine: inode -> (local port, remote port)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            found[int(parts[9])] = (int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16))
    return found


def _owners(pids: dict[int, str]) -> dict[tuple[int, int], int]:
    """(local port, remote port) of each TCP socket these processes hold -> the pid."""
    sockets, owners = _sockets(), {}
    for pid in pids:
        try:
            fds = list((Path("/proc") / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in sockets:
                owners[sockets[int(target[8:-1])]] = pid
    return owners


def _node_clients(place: Place, trees: dict[str, dict[int, str]], channels: dict[str, str]) -> list[NodeClients]:
    out = []
    for port, role in place.nodes():
        with redis.Redis(host=HOST, port=port, socket_timeout=2, decode_responses=True) as client:
            own = client.client_id()
            listed = client.client_list()
            owners = _owners({pid: label for tree in trees.values() for pid, label in tree.items()})
            numsub: dict[str, int | None] = {path: None for path in channels}
            if role != "sentinel":
                for path, channel in channels.items():
                    numsub[path] = int(client.pubsub_numsub(channel)[0][1])
        counts: dict[str, dict[str, int]] = {path: {} for path in trees}
        other = 0
        for entry in listed:
            if int(entry["id"]) == own or set(entry.get("flags", "")) & {"S", "M"}:
                continue
            pid = owners.get((int(entry["addr"].rsplit(":", 1)[1]), port))
            owner = next((p for p, tree in trees.items() if pid in tree), None)
            if owner is None or pid is None:
                other += 1
                continue
            label = trees[owner][pid]
            counts[owner][label] = counts[owner].get(label, 0) + 1
        out.append(NodeClients(place.mode, port, role, counts, other, numsub))
        _log(f"{place.mode:10} node {port} ({role}): "
             + "; ".join(f"{path} {sum(c.values())} {dict(c)}" for path, c in counts.items()) + f"; other {other}; numsub {numsub}")
    return out


# --- 2. failover ------------------------------------------------------------------------------------------------


def failover(place: Place, workdir: Path, opts: argparse.Namespace, run_id: str) -> FailoverResult:
    prefix = f"bench-{run_id}-failover-{place.mode}"
    token = uuid.uuid4().hex
    generation_key = f"{prefix}:generation:{{{prefix}}}:{FIELD}"
    variants = [service(f"failover-{place.mode}-{i}", f"failover {place.mode} {i}", place.url, run_id, "HIT",
                        GQL_CACHE_PREFIX=prefix, GQL_ADMIN_TOKEN=token, **place.env) for i in (1, 2)]
    with started_all(variants, workdir) as servers:
        for server in servers:
            _until_hit(server, True)
        urls = [s.url for s in servers]
        stop = threading.Event()
        answers: list[list[Answer]] = [[] for _ in range(1 + opts.clients)]
        refreshes: list[Refresh] = []
        polls: list[list[Poll]] = [[] for _ in servers]
        threads = [threading.Thread(target=_load, args=(urls, i, stop, answers[i]), daemon=True) for i in range(1 + opts.clients)]
        threads.append(threading.Thread(target=_refresher, args=(urls[0], token, opts.refresh_every, stop, refreshes), daemon=True))
        threads += [threading.Thread(target=_poller, args=(url, opts.poll_every, stop, polls[i]), daemon=True)
                    for i, url in enumerate(urls)]
        timed_out = False
        try:
            for thread in threads:
                thread.start()
            _log(f"{place.mode}: load, refreshes and health polls on {', '.join(urls)}; the kill in {opts.before:g} s")
            time.sleep(opts.before)
            before = _generation(place, generation_key)
            kill_at = time.time()
            killed, wait = place.kill_master(generation_key)
            promoted = wait()
            promoted_after = time.time() - kill_at
            at_promotion = _generation(place, generation_key)
            _log(f"{place.mode}: killed {killed}; {promoted} took over after {promoted_after:.2f} s")
            deadline = time.monotonic() + 60
            while not _back(answers, polls, kill_at):
                if time.monotonic() > deadline:
                    timed_out = True
                    _log(f"warning: {place.mode}: the servers are not back on Redis 60 s after the failover")
                    break
                time.sleep(0.05)
            time.sleep(opts.after)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        after = _generation(place, generation_key)
    result = FailoverResult(place.mode, killed, promoted, kill_at, promoted_after, [a for t in answers for a in t],
                            refreshes, polls, before, at_promotion, after, timed_out)
    _log(f"{place.mode}: {len(result.answers):,} requests, {len(result.errors)} errors, {len(result.lost)} refreshes lost, "
         f"both ok after {_seconds(result.both_ok_after)}, first HIT via Redis after {_seconds(result.first_redis_hit_after)}; "
         f"generation {before} before, {at_promotion} at promotion, {after} after")
    return result


def _generation(place: Place, key: str) -> int | None:
    try:
        value = place.get(key)
    except redis.RedisError as exc:
        _log(f"warning: reading {key} failed: {exc!r}")
        return None
    return None if value is None else int(value)


def _recovered_at(polls: list[Poll], kill_at: float) -> tuple[float | None, int]:
    after = [p for p in list(polls) if p.at >= kill_at]
    bad = [p for p in after if p.state != "ok"]
    if not bad:
        return (kill_at if after else None), 0
    return next((p.at for p in after if p.at > bad[-1].at and p.state == "ok"), None), len(bad)


def _first_redis_hit(answers: list[Answer], recovered: list[float | None], kill_at: float) -> float | None:
    """Seconds from the kill to the first HIT from a server whose /healthz had said "ok" again (so it read Redis)."""
    times = []
    for a in answers:
        back = recovered[a.server]
        if a.error is None and a.status == "HIT" and a.sent >= kill_at and back is not None and a.sent >= back:
            times.append(a.received)
    return min(times) - kill_at if times else None


def _back(answers: list[list[Answer]], polls: list[list[Poll]], kill_at: float) -> bool:
    """Both servers' /healthz say "ok" now, and a server back on Redis has answered a HIT."""
    if not all(p and p[-1].state == "ok" for p in polls):
        return False
    recovered = [_recovered_at(p, kill_at)[0] for p in polls]
    return _first_redis_hit([a for t in answers for a in list(t)], recovered, kill_at) is not None


def _load(urls: list[str], first: int, stop: threading.Event, out: list[Answer]) -> None:
    """One request at a time, alternating between the servers, until told to stop."""
    body = json.dumps({"query": SMALL}).encode()
    clients = [httpx2.Client(base_url=url, timeout=10) for url in urls]
    n = first
    try:
        while not stop.is_set():
            server, n = n % len(urls), n + 1
            sent = time.time()
            try:
                response = clients[server].post("/graphql", content=body, headers=_JSON)
            except httpx2.HTTPError as exc:
                out.append(Answer(server, sent, time.time(), f"transport error: {type(exc).__name__}", "-", None))
                continue
            received = time.time()
            if response.status_code != 200:
                out.append(Answer(server, sent, received, f"HTTP {response.status_code}", "-", None))
                continue
            try:
                answer = response.json()
            except ValueError:
                out.append(Answer(server, sent, received, "not JSON", "-", None))
                continue
            if answer.get("errors") or not answer.get("data"):
                message = (answer.get("errors") or [{}])[0].get("message", "no data")
                out.append(Answer(server, sent, received, f"GraphQL error: {str(message)[:160]}", "-", None))
                continue
            entry = _report_entry(answer)
            out.append(Answer(server, sent, received, None, str(entry["status"]) if entry else "-",
                              float(entry["ageSeconds"]) if entry else None))
    finally:
        for client in clients:
            client.close()


def _refresher(url: str, token: str, every: float, stop: threading.Event, out: list[Refresh]) -> None:
    """A refreshCache mutation every `every` seconds (the next one at once when one takes longer)."""
    body = json.dumps({"query": REFRESH}).encode()
    headers = {**_JSON, "authorization": f"Bearer {token}"}
    due = time.monotonic()
    with httpx2.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            sent = time.time()
            error = None
            try:
                response = client.post("/graphql", content=body, headers=headers)
                answer = response.json() if response.status_code == 200 else {}
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
                elif answer.get("errors") or not (answer.get("data") or {}).get("refreshCache"):
                    error = f"GraphQL error: {str((answer.get('errors') or [{}])[0].get('message'))[:160]}"
            except (httpx2.HTTPError, ValueError) as exc:
                error = f"transport error: {type(exc).__name__}"
            out.append(Refresh(sent, time.time(), error))
            due = max(due + every, time.monotonic())
            stop.wait(due - time.monotonic())


def _poller(url: str, every: float, stop: threading.Event, out: list[Poll]) -> None:
    with httpx2.Client(base_url=url, timeout=1) as client:
        while not stop.is_set():
            began = time.monotonic()
            try:
                state = str(client.get("/healthz").json()["cache"]["state"])
            except (httpx2.HTTPError, ValueError, KeyError) as exc:
                state = f"error: {type(exc).__name__}"
            out.append(Poll(time.time(), state))
            stop.wait(max(0.0, every - (time.monotonic() - began)))


def lost_refreshes(answers: list[Answer], refreshes: list[Refresh]) -> list[Lost]:
    """Answers to requests sent after a refresh had returned that hold a value computed before it was sent."""
    done = sorted((r for r in refreshes if r.error is None), key=lambda r: r.returned)
    returned = [r.returned for r in done]
    lost = []
    for answer in answers:
        if answer.error is not None or answer.age is None:
            continue
        k = bisect.bisect_left(returned, answer.sent) - 1  # the latest refresh that had returned when it was sent
        if k >= 0 and answer.age > answer.received - done[k].sent + ROUNDING:
            lost.append(Lost(answer, done[k]))
    return lost


# --- the report ---------------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def _rps_range(runs: list[Phase]) -> str:
    rates = [r.rps for r in runs]
    return f"{min(rates):,.0f}–{max(rates):,.0f}"


def _round_ratios(cell: Cell, base: Cell) -> str:
    """The spread of the ratio to the baseline round by round (each pair measured a minute apart at most)."""
    ratios = [a.rps / b.rps for a, b in zip(cell.runs, base.runs, strict=True) if b.rps]
    if len(ratios) < 2:
        return "-"
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def hits_section(cells: list[Cell], opts: argparse.Namespace) -> list[str]:
    lines = [
        "## 1. Hit throughput by Redis mode",
        "",
        (f"`{SMALL}` warmed to a HIT, then `wrk -t1 -c{opts.connections} -d{opts.duration:g}s` "
         + (f"after {opts.warmup:g} s of unmeasured wrk" if opts.warmup > 0 else "without a warm-up")
         + f"; {opts.rounds} round(s), the six setups taking turns in each; req/s, p50 and p99 are medians of the rounds. "
         "Ratios: over standalone's median for the same path, from the same run (req/s: higher is better; p99: lower is "
         "better); per-round: the range of the ratio of each round's pair. Cache: what a request got after each run."),
        "",
        ("| path | mode | cache | requests | req/s | req/s range | p50 ms | p99 ms | failed | req/s ÷ standalone "
         "| per-round ÷ standalone | p99 ÷ standalone |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(c.mode, c.path): c for c in cells}
    for path, (title, _) in PATHS.items():
        base = by["standalone", path]
        for mode in MODES:
            c = by[mode, path]
            lines.append(
                f"| {title} | {mode} | {', '.join(sorted(c.statuses))} | {sum(r.requests for r in c.runs):,} | {c.rps:,.0f} "
                f"| {_rps_range(c.runs)} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.failed} | {_ratio(c.rps, base.rps)} "
                f"| {_round_ratios(c, base)} | {_ratio(c.p99_ms, base.p99_ms)} |"
            )
    return lines + [""]


def connections_section(nodes: list[NodeClients], processes: dict[tuple[str, str], dict[str, int]], opts: argparse.Namespace) -> list[str]:
    lines = [
        "## 3. Connections and subscriptions per server process",
        "",
        (f"After part 1 (each server has had {opts.rounds} x {opts.warmup + opts.duration:g} s of "
         f"wrk -c{opts.connections}): each node's CLIENT LIST without replication links (flags S, M) and the bench's own "
         "connection, each client attributed by its socket (/proc) to the server process or its query worker process. "
         "Other: clients of none of them (on a sentinel group, the sentinels' own links). Subscriptions: "
         "PUBSUB NUMSUB of `<prefix>:filled` on every data node, summed."),
        "",
        "| mode | path | node | role | server process | query worker | total | other clients on the node |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for node in nodes:
        for path in PATHS:
            counts = node.counts.get(path, {})
            server, worker = counts.get("server", 0), counts.get("query worker", 0)
            rest = sum(v for k, v in counts.items() if k not in ("server", "query worker"))
            note = f" (+{rest} other children)" if rest else ""
            lines.append(f"| {node.mode} | {path} | {node.port} | {node.role} | {server} | {worker}{note} "
                         f"| {sum(counts.values())} | {node.other} |")
    lines += [
        "",
        ("| mode | path | processes (server + query workers) | connections: server | connections: query worker | total "
         "| per process | nodes used | subscriptions (NUMSUB) | subscriptions per process |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for path in PATHS:
            mine = [n for n in nodes if n.mode == mode]
            server = sum(n.counts.get(path, {}).get("server", 0) for n in mine)
            worker = sum(n.counts.get(path, {}).get("query worker", 0) for n in mine)
            total = sum(sum(n.counts.get(path, {}).values()) for n in mine)
            used = sum(1 for n in mine if n.counts.get(path))
            count = processes.get((mode, path), {})
            serving = count.get("server", 0) + count.get("query worker", 0)
            subs = sum(n.numsub.get(path) or 0 for n in mine)
            lines.append(f"| {mode} | {path} | {serving} | {server} | {worker} | {total} "
                         f"| {total / serving:.1f} | {used} of {len(mine)} | {subs} | {subs / serving:.1f} |"
                         if serving else f"| {mode} | {path} | 0 | {server} | {worker} | {total} | - | {used} | {subs} | - |")
    return lines + [""]


def _phases(result: FailoverResult) -> dict[str, list[Answer]]:
    out: dict[str, list[Answer]] = {"before the kill": [], "kill → both ok": [], "after both ok": []}
    for answer in result.answers:
        out[result.phase(answer)].append(answer)
    return out


def failover_section(results: list[FailoverResult], opts: argparse.Namespace) -> list[str]:
    lines = [
        "## 2. A master killed under load",
        "",
        (f"Two servers (defaults) under {1 + opts.clients} client threads, one request at a time each, alternating between "
         f"the servers; a refreshCache of YIELD_THIS_YEAR to server 1 every {opts.refresh_every:g} s; /healthz of each "
         f"polled every {opts.poll_every * 1000:.0f} ms. The master holding the generation keys' slot SIGKILLed after "
         f"{opts.before:g} s; then until the replica took over, both servers said \"ok\" and a HIT came from a server "
         f"back on Redis, and {opts.after:g} s more. Without Redis: from the kill until /healthz said \"ok\" for good "
         "(the later server); first HIT via Redis: the first HIT, after the kill, from a server whose /healthz had said "
         "\"ok\" again."),
        "",
        ("| mode | killed | took over after | without Redis: server 1 / server 2 | until both ok | until a HIT via Redis "
         "| requests | errors | refreshes sent / failed | refreshes lost | generation before → at promotion → after "
         "| after ≥ before |"),
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        per_server = " / ".join(
            f"{_seconds(at - r.kill_at if at is not None else None)} ({bad} polls not ok)"
            for at, bad in (r.recovered_at(i) for i in range(len(r.polls))))
        failed = sum(1 for x in r.refreshes if x.error)
        ok_generation = (r.generation_before is not None and r.generation_after is not None
                         and r.generation_after >= r.generation_before)
        lines.append(
            f"| {r.mode} | {r.killed} → {r.promoted} | {r.promoted_after:.2f} s | {per_server} | {_seconds(r.both_ok_after)} "
            f"| {_seconds(r.first_redis_hit_after)} | {len(r.answers):,} | {len(r.errors)} | {len(r.refreshes)} / {failed} "
            f"| {len(r.lost)} | {r.generation_before} → {r.generation_promoted} → {r.generation_after} "
            f"| {'yes' if ok_generation else '**no**'} |"
        )
    lines += ["", "By phase (a request's phase is when it was sent):", "",
              "| mode | phase | requests | errors | refreshes lost (server 1 / 2) | cache statuses |",
              "|---|---|---:|---:|---:|---|"]
    for r in results:
        lost = {id(x.answer): x for x in r.lost}
        for name, answers in _phases(r).items():
            statuses = Counter(a.status for a in answers if a.error is None)
            mine = [a for a in answers if id(a) in lost]
            lines.append(
                f"| {r.mode} | {name} | {len(answers):,} | {sum(1 for a in answers if a.error)} "
                f"| {len(mine)} ({sum(1 for a in mine if a.server == 0)} / {sum(1 for a in mine if a.server == 1)}) "
                f"| {', '.join(f'{n:,} {s}' for s, n in sorted(statuses.items())) or '-'} |"
            )
    lines += ["", ("Refreshes (sent to server 1): their duration, and server 1's /healthz when each was sent (a refresh "
              "made while server 1 has no Redis changes that server's own cache only, until it reconnects):"), "",
              "| mode | refreshes | ms: median before the kill | ms: median after both ok | ms: max | sent while server 1 not ok |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        ok_at = r.kill_at + r.both_ok_after if r.both_ok_after is not None else float("inf")
        before = [(x.returned - x.sent) * 1000 for x in r.refreshes if x.returned < r.kill_at]
        after = [(x.returned - x.sent) * 1000 for x in r.refreshes if x.sent >= ok_at]
        every = [(x.returned - x.sent) * 1000 for x in r.refreshes]
        blind = sum(1 for x in r.refreshes if r.state_at(0, x.sent) != "ok")
        lines.append(f"| {r.mode} | {len(r.refreshes)} | {median(before):.0f} | {median(after):.0f} | {max(every):.0f} | {blind} |"
                     if before and after else f"| {r.mode} | {len(r.refreshes)} | - | - | {max(every, default=0):.0f} | {blind} |")
    windows = [(r, w) for r in results for w in _lost_windows(r)]
    if windows:
        lines += ["", ("Refreshes lost, by the refresh they missed and the server that answered (times in s from the kill; "
                  "computed: when the value answered was computed, received − ageSeconds):"), "",
                  ("| mode | refresh sent | returned | server 1 /healthz when sent | answered by | answers | first sent | "
                   "last sent | value computed |"),
                  "|---|---:|---:|---|---|---:|---:|---:|---:|"]
        for r, (refresh, server, group) in windows:
            computed = sorted(x.answer.received - (x.answer.age or 0.0) - r.kill_at for x in group)
            shown = f"{computed[0]:+.2f}" if computed[-1] - computed[0] < 0.01 else f"{computed[0]:+.2f} to {computed[-1]:+.2f}"
            lines.append(f"| {r.mode} | {refresh.sent - r.kill_at:+.2f} | {refresh.returned - r.kill_at:+.2f} "
                         f"| {r.state_at(0, refresh.sent)} | server {server + 1} | {len(group)} "
                         f"| {group[0].answer.sent - r.kill_at:+.2f} | {group[-1].answer.sent - r.kill_at:+.2f} | {shown} |")
    for r in results:
        notes = []
        if r.timed_out:
            notes.append("the servers were not back on Redis within 60 s of the failover")
        kinds = Counter(a.error for a in r.errors)
        if kinds:
            notes.append("errors: " + "; ".join(f"{n} × `{k}`" for k, n in kinds.most_common(5)))
        refresh_kinds = Counter(x.error for x in r.refreshes if x.error)
        if refresh_kinds:
            notes.append("failed refreshes: " + "; ".join(f"{n} × `{k}`" for k, n in refresh_kinds.most_common(5)))
        if r.lost:
            worst = max(r.lost, key=lambda x: x.before_refresh)
            first = min(r.lost, key=lambda x: x.answer.sent)
            last = max(r.lost, key=lambda x: x.answer.sent)
            notes.append(
                f"refreshes lost: {len(r.lost)} answers, sent {first.answer.sent - r.kill_at:+.2f} s to "
                f"{last.answer.sent - r.kill_at:+.2f} s from the kill; the worst held a value computed "
                f"{worst.before_refresh:.2f} s before the refresh (sent {worst.refresh.sent - r.kill_at:+.2f} s, returned "
                f"{worst.refresh.returned - r.kill_at:+.2f} s) it was asked after, from server {worst.answer.server + 1} "
                f"({worst.answer.status}, ageSeconds {worst.answer.age})")
        if notes:
            lines += ["", f"{r.mode}: " + ". ".join(notes) + "."]
    lines += [""]
    return lines


def _lost_windows(result: FailoverResult) -> list[tuple[Refresh, int, list[Lost]]]:
    """The lost answers grouped by the refresh they missed and the server that gave them, in time order."""
    groups: dict[tuple[float, int], list[Lost]] = {}
    for lost in sorted(result.lost, key=lambda x: x.answer.sent):
        groups.setdefault((lost.refresh.sent, lost.answer.server), []).append(lost)
    return [(group[0].refresh, server, group) for (_, server), group in sorted(groups.items())]


def logs_section(logs: dict[str, list[str]], per_server: int = 6) -> list[str]:
    noisy = {name: lines for name, lines in logs.items() if lines}
    if not noisy:
        return ["## Server logs (fleet)", "", "No server logged anything at warning level or above.", ""]
    lines = ["## Server logs (fleet)", "", ("What the servers logged (warning and above; a refreshCache is logged at "
             "warning), first lines per server; a server's query worker process logs to the same file:"), "", "```"]
    for name, logged in noisy.items():
        lines += [f"{name}: {len(logged)} lines"] + [f"  {line[:240]}" for line in logged[:per_server]]
    return lines + ["```", ""]


def _how_to_read(result: FleetResult) -> list[str]:
    return [
        ("How to read this: part 1 says what a hit costs when Redis is a Cluster or a Sentinel group instead of one "
         "server; the ratio columns compare each mode with standalone in the same run (the machine is shared, so "
         "absolute req/s move from run to run, the ratios less). Part 2 is what clients see while a master dies: errors "
         "and refreshes lost should both be 0 (once a refresh has returned, no answer holds a value computed before it "
         "was sent), and the generation in Redis after the failover at least the one before. \"Without Redis\" is how "
         "long a server answered from its own memory: once its breaker has opened it tries Redis again after "
         "GQL_REDIS_RETRY_SECONDS (5 s), so this is mostly that cool-down, not the failover. The lost-refresh tables say "
         "which refresh each stale answer missed and what server 1 (the one refreshed) said about Redis when it was "
         "sent. Part 3 is the connections one server process and its query worker keep open on each node after "
         "sustained load, and their pub/sub subscriptions: a fleet of N servers costs the nodes N times that."),
        "",
    ]


def render(result: FleetResult, command: str) -> str:
    head = [
        "# Redis topologies: standalone, Cluster and Sentinel",
        "",
        f"Machine: {report.machine()}.",
        (f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `{command}`, {result.elapsed:.0f} s in all. "
         f"1-minute load average {result.load_before:.2f} before, {os.getloadavg()[0]:.2f} at the end (other work on the "
         "machine skews results). Every comparison is with a baseline measured in the same run. Method: the docstring "
         "of bench/fleet.py; every topology is the bench's own (tests/support/topologies.py), on free ports."),
        "",
        *_how_to_read(result),
    ]
    sections = [hits_section(result.cells, result.opts), failover_section(result.failovers, result.opts),
                connections_section(result.nodes, result.processes, result.opts), logs_section(result.logs)]
    return "\n".join(head + [line for section in sections for line in section])


def summary(result: FleetResult, link: str = "fleet.md") -> list[str]:
    """A short section for benchmark.md: hit ratios to standalone, the failovers, connections per server."""
    by = {(c.mode, c.path): c for c in result.cells}
    ratios = "; ".join(
        f"{title.split(' (')[0]}: " + ", ".join(
            f"{mode} {by[mode, path].rps:,.0f} req/s ({_ratio(by[mode, path].rps, by['standalone', path].rps)}x)"
            for mode in MODES)
        for path, (title, _) in PATHS.items())
    lines = [
        "## Redis topologies: standalone, Cluster, Sentinel",
        "",
        (f"Method and every table: [{link}]({link}) (`python -m bench.fleet`, {result.elapsed:.0f} s). Hits of the small "
         f"query, wrk -c{result.opts.connections}, {result.opts.rounds} x {result.opts.duration:g} s, ratio to standalone "
         f"in the same run: {ratios}."),
        "",
    ]
    for r in result.failovers:
        generation = ("after ≥ before" if r.generation_before is not None and r.generation_after is not None
                      and r.generation_after >= r.generation_before else "**after < before or unread**")
        lines.append(
            f"- {r.mode}, {r.killed} killed under load: replica master after {r.promoted_after:.2f} s, both servers on "
            f"Redis again after {_seconds(r.both_ok_after)} (first HIT via Redis {_seconds(r.first_redis_hit_after)}); "
            f"{len(r.answers):,} requests, {len(r.errors)} errors, {len(r.lost)} refreshes lost (target 0 and 0: "
            f"{'met' if not r.errors and not r.lost else 'missed'}); generation {generation}.")
    totals = []
    for mode in MODES:
        mine = [n for n in result.nodes if n.mode == mode]
        total = sum(sum(n.counts.get("response", {}).values()) for n in mine)
        totals.append(f"{mode} {total}")
    lines.append(f"- Redis connections of one default server (server + query worker process), all nodes: {', '.join(totals)}.")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
