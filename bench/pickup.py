"""Pickup delay of new data over HTTP: from an import's return to the first answer of the new version, per process.

Two servers share one redis-server and one data directory (10 sample indexes, about 5,700 closes each):
A with `--workers 2`, B with one worker; both with their query worker process. A writer imports one more
trading day of one index through the real importer (`gql.importer.import_csv`, an atomic replace) every
`--every` seconds. Meanwhile pollers ask, on fresh connections:

- `GET /healthz` of each server, which names the answering process (`process`) and its `data.version`:
  per process, the delay from the import's return to the first answer of the new version;
- a GraphQL query of each server, whose `extensions.dataVersion` names the version answered from: the latest
  request that began after the import and was still answered from older data (0 if none).

No request is needed for a process to pick up the data (the pollers only look). Run once with file system
events (inotify, the default) and once with `WATCHFILES_FORCE_POLLING=1` (what NFS needs). The bound the
service promises is 1 s; the ratio column is max / 1 s.

    .venv/bin/python -m bench.pickup [--imports 20] [--every 1.0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import median, percentile
from bench.servers import ROOT, Server, Variant, redis_server, started_all, wait_until

BOUND = 1.0
HELD_BACK = 60  # trading days of each index left out at first, imported back one per step
QUERY = json.dumps({"query": '{ indexes { lastDate } yieldThisYear(codes: ["000300"]) { lastDate } }'}).encode()


@dataclass
class Seen:
    sent: float  # monotonic time the request was sent
    received: float
    process: int | None  # None for GraphQL answers (they do not name the process)
    version: str


@dataclass
class Poller:
    """Asks one server again and again on fresh connections (so every uvicorn worker gets asked)."""

    server: str
    port: int
    graphql: bool
    seen: list[Seen] = field(default_factory=list)
    errors: int = 0

    def run(self, stop: threading.Event, pause: float) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                if self.graphql:
                    conn.request("POST", "/graphql", QUERY, {"content-type": "application/json"})
                else:
                    conn.request("GET", "/healthz")
                body = json.loads(conn.getresponse().read())
                conn.close()
                received = time.monotonic()
                if self.graphql:
                    self.seen.append(Seen(sent, received, None, body["extensions"]["dataVersion"]))
                else:
                    self.seen.append(Seen(sent, received, body["process"], body["data"]["version"]))
            except Exception:  # noqa: BLE001  # any failed poll is counted, not fatal
                self.errors += 1
            stop.wait(pause)


@dataclass
class Landed:
    returned: float  # monotonic time import_csv returned
    version: str
    older: set[str]  # every version before it


@dataclass
class ModeResult:
    mode: str
    landed: list[Landed]
    per_process: dict[tuple[str, int], list[float]]  # (server, pid) -> pickup seconds per import
    missed: int  # (process, import) pairs never seen on the new version before the next import
    stale_after: dict[str, list[float]]  # server -> per import: latest sent-after-import old GraphQL answer (s)
    resolution_ms: float  # median gap between two answers of one process
    requests: int
    errors: int


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "python -m bench.pickup " + shlex.join(argv if argv is not None else sys.argv[1:])
    began = time.monotonic()
    results = run(args.imports, args.every)
    text = "\n".join(render(results, command.strip(), time.monotonic() - began))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    _log(f"wrote {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.pickup", description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=20, help="imports per mode (default 20)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between imports (default 1.0)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "pickup.md", help="report (default bench/results/pickup.md)"
    )
    return parser


def _log(message: str) -> None:
    print(f"[pickup] {message}", file=sys.stderr, flush=True)


def run(imports: int, every: float) -> list[ModeResult]:
    return [_mode(mode, env, imports, every) for mode, env in
            (("file system events (default)", {}), ("WATCHFILES_FORCE_POLLING=1", {"WATCHFILES_FORCE_POLLING": "1"}))]


def _mode(mode: str, extra_env: dict[str, str], imports: int, every: float) -> ModeResult:
    from gql.data import write_index_file
    from gql.importer import import_csv
    from gql.sample import generate_sample
    from gql.sources import load_directory

    workdir = Path(tempfile.mkdtemp(prefix="gql-pickup-"))
    data_dir, staging = workdir / "data", workdir / "staging"
    data_dir.mkdir()
    staging.mkdir()
    histories = generate_sample()
    for history in histories:
        write_index_file(data_dir, type(history)(history.meta, history.closes.iloc[:-HELD_BACK]))
    rows = {h.meta.code: len(h.closes) - HELD_BACK for h in histories}
    try:
        with redis_server(workdir) as redis_url:
            prefix = f"bench-pickup-{uuid.uuid4().hex[:6]}"
            env = {"REDIS_URL": redis_url, "GQL_CACHE_PREFIX": prefix, "GQL_LOG_LEVEL": "warning",
                   "GQL_DATA_DIR": str(data_dir), **extra_env}
            variants = [_server("A", 2, env), _server("B", 1, env)]
            with started_all(variants, workdir) as servers:
                ports = {s.variant.key: int(s.url.rsplit(":", 1)[1]) for s in servers}
                processes = _processes(servers, {"A": 2, "B": 1})
                _log(f"{mode}: processes {processes}")
                pollers = [Poller(name, port, graphql) for name, port in ports.items()
                           for graphql in (False, False, False, True)]
                stop = threading.Event()
                threads = [threading.Thread(target=p.run, args=(stop, 0.004), daemon=True) for p in pollers]
                for thread in threads:
                    thread.start()
                landed: list[Landed] = []
                versions = {load_directory(data_dir).version}
                time.sleep(every)
                for step in range(imports):
                    history = histories[step % len(histories)]
                    code = history.meta.code
                    rows[code] += 1
                    source = staging / f"{code}-{step}.csv"
                    history.closes.iloc[:rows[code]].rename_axis("date").rename("close").to_csv(source)
                    import_csv(source, data_dir, code, history.meta.name)
                    returned = time.monotonic()
                    version = load_directory(data_dir).version  # what every process must answer from next
                    landed.append(Landed(returned, version, set(versions)))
                    versions.add(version)
                    time.sleep(max(0.0, every - (time.monotonic() - returned)))
                time.sleep(BOUND)
                stop.set()
                for thread in threads:
                    thread.join(10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _analyse(mode, landed, pollers, processes)


def _server(key: str, workers: int, env: dict[str, str]) -> Variant:
    return Variant(key, f"server {key}", lambda port: [sys.executable, "-m", "gql", "serve", "--port", str(port),
                                                       "--workers", str(workers)], env)


def _processes(servers: list[Server], expected: dict[str, int]) -> dict[str, set[int]]:
    """The pids answering each server, once all of its workers have answered (fresh connections spread them)."""
    found: dict[str, set[int]] = {s.variant.key: set() for s in servers}

    def all_seen() -> bool:
        for server in servers:
            port = int(server.url.rsplit(":", 1)[1])
            for _ in range(8):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                found[server.variant.key].add(json.loads(conn.getresponse().read())["process"])
                conn.close()
        return all(len(found[k]) >= n for k, n in expected.items())

    wait_until(all_seen, "every worker answering /healthz", 60)
    return found


def _analyse(mode: str, landed: list[Landed], pollers: list[Poller], processes: dict[str, set[int]]) -> ModeResult:
    per_process: dict[tuple[str, int], list[float]] = {(s, p): [] for s, pids in processes.items() for p in pids}
    stale_after: dict[str, list[float]] = {s: [] for s in processes}
    gaps: dict[tuple[str, int], list[float]] = {k: [] for k in per_process}
    missed = 0
    for poller in pollers:
        if poller.graphql:
            continue
        last: dict[int, float] = {}
        for seen in poller.seen:
            if seen.process is None:
                continue  # only /readyz answers (never GraphQL ones) name the process
            if seen.process in last:
                gaps.setdefault((poller.server, seen.process), []).append(seen.received - last[seen.process])
            last[seen.process] = seen.received
    for i, land in enumerate(landed):
        until = landed[i + 1].returned if i + 1 < len(landed) else float("inf")
        for key in per_process:  # noqa: PLC0206  # the key is unpacked; the value is replaced below
            server, pid = key
            firsts = [seen.received for p in pollers if p.server == server and not p.graphql for seen in p.seen
                      if seen.process == pid and seen.version == land.version and land.returned <= seen.sent < until]
            # An answer of the new version sent before the import returned counts from the return (it landed).
            early = [seen.received for p in pollers if p.server == server and not p.graphql for seen in p.seen
                     if seen.process == pid and seen.version == land.version and seen.sent < land.returned <= seen.received]
            times = firsts + early
            if times:
                per_process[key].append(max(0.0, min(times) - land.returned))
            else:
                missed += 1
        for server in stale_after:  # noqa: PLC0206  # counted below from the pollers, not from the dict
            old = [seen.sent - land.returned for p in pollers if p.server == server and p.graphql for seen in p.seen
                   if land.returned <= seen.sent < until and seen.version in land.older]
            stale_after[server].append(max(old, default=0.0))
    all_gaps = [g for values in gaps.values() for g in values]
    return ModeResult(mode, landed, per_process, missed, stale_after,
                      median(all_gaps) * 1000 if all_gaps else float("nan"),
                      sum(len(p.seen) for p in pollers), sum(p.errors for p in pollers))


def render(results: list[ModeResult], command: str, elapsed: float) -> list[str]:
    from bench import report

    return [
        "# Data pickup delay",
        "",
        f"Machine: {report.machine()}.",
        (f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `{command}`, {elapsed:.0f} s in all, "
        f"1-minute load average {os.getloadavg()[0]:.2f} at the end."),
        "",
        *section(results),
    ]


def section(results: list[ModeResult]) -> list[str]:
    lines = [
        "## Data pickup: from an import's return to the first answer of the new version",
        "",
        ("Server A (`--workers 2`) and server B (one worker) read one data directory; one index gains a trading day "
        "per import (`gql.importer.import_csv`). Per process: `/healthz` answers (they name the process) on fresh "
        "connections, about every 4 ms per poller, 3 pollers per server; the delay runs from the import's return "
        "to the first answer of the new version, measured to the poll that saw it (so it includes up to one poll "
        "interval: the resolution column). GraphQL: the latest request sent after an import's return that was "
        "still answered from older data (`extensions.dataVersion`). Ratio: max / the 1 s bound."),
        "",
        "| watcher | process | imports | p50 ms | p90 ms | max ms | max / 1 s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        every = [d for values in result.per_process.values() for d in values]
        for (server, pid), values in sorted(result.per_process.items()):
            lines.append(f"| {result.mode} | {server} pid {pid} | {len(values)} | {_ms(median(values))} "
                         f"| {_ms(percentile(values, 0.9))} | {_ms(max(values))} | {max(values) / BOUND:.2f} |")
        lines.append(f"| {result.mode} | **all processes** | {len(every)} | **{_ms(median(every))}** "
                     f"| {_ms(percentile(every, 0.9))} | **{_ms(max(every))}** | {max(every) / BOUND:.2f} |")
    lines += ["", ("| watcher | server | latest old GraphQL answer after an import, max ms | resolution ms (median "
              "gap between answers of one process) | requests | failed | (process, import) pairs not seen |"),
              "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for server, values in sorted(result.stale_after.items()):
            lines.append(f"| {result.mode} | {server} | {_ms(max(values, default=0.0))} | {result.resolution_ms:.1f} "
                         f"| {result.requests} | {result.errors} | {result.missed} |")
    return lines + [""]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
