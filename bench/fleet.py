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

    python -m bench.fleet             # full: about 4.5 minutes; writes bench/results/fleet.md
    python -m bench.fleet --quick     # smoke run: 3 s x 1 round, shorter failover phases; about 70 s
`make bench` runs it too (bench/run.py, `--fleet full|quick|off`) and links the file from benchmark.md.
The result types, how lost refreshes are worked out, and the Markdown: bench/fleetreport.py.
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass
from pathlib import Path

import httpx2
import redis
import redis.cluster
import redis.sentinel

from bench import report
from bench.faults import CHECKED_LUA, checked_wrk, scrape_metrics
from bench.fleetreport import (
    FIELD,
    MODES,
    PATHS,
    SMALL,
    Answer,
    Cell,
    FailoverResult,
    FleetResult,
    NodeClients,
    Poll,
    Refresh,
    first_redis_hit,
    recovered_at,
    render,
    seconds_text,
)
from bench.servers import ROOT, RedisProcess, Server, service, started_all
from tests.support.topologies import HOST, RedisCluster, SentinelGroup

RESULTS = ROOT / "bench" / "results"

REFRESH = "mutation { refreshCache(targets: [YIELD_THIS_YEAR]) { refreshed { target } } }"
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
         f"both ok after {seconds_text(result.both_ok_after)}, first HIT via Redis after {seconds_text(result.first_redis_hit_after)}; "
         f"generation {before} before, {at_promotion} at promotion, {after} after")
    return result


def _generation(place: Place, key: str) -> int | None:
    try:
        value = place.get(key)
    except redis.RedisError as exc:
        _log(f"warning: reading {key} failed: {exc!r}")
        return None
    return None if value is None else int(value)


def _back(answers: list[list[Answer]], polls: list[list[Poll]], kill_at: float) -> bool:
    """Both servers' /healthz say "ok" now, and a server back on Redis has answered a HIT."""
    if not all(p and p[-1].state == "ok" for p in polls):
        return False
    recovered = [recovered_at(p, kill_at)[0] for p in polls]
    return first_redis_hit([a for t in answers for a in list(t)], recovered, kill_at) is not None


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


if __name__ == "__main__":
    raise SystemExit(main())
