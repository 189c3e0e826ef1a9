"""The report of bench/fleet.py: what each measurement keeps, how lost refreshes and the time without Redis are
worked out from it, and the Markdown of bench/results/fleet.md (and of its section in benchmark.md)."""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import os
from collections import Counter
from dataclasses import dataclass, field

from bench import report
from bench.faults import Phase
from bench.load import median

SMALL = "{ yieldThisYear { code yieldPct } }"
FIELD = "yieldThisYear"
MODES = ("standalone", "cluster", "sentinel")
# The two hit paths of part 1: key -> (title, settings).
PATHS = {
    "response": ("whole-response cache (defaults)", {}),
    "field": ("field cache (GQL_RESPONSE_CACHE=false, GQL_QUERY_PROCESSES=0)",
              {"GQL_RESPONSE_CACHE": "false", "GQL_QUERY_PROCESSES": "0"}),
}
ROUNDING = 0.001  # ageSeconds is given to the millisecond


# --- what is kept --------------------------------------------------------------------------------------------


@dataclass
class Cell(report.Rounds):
    """Every round of one setup of part 1."""

    mode: str
    path: str
    runs: list[Phase] = field(default_factory=list)
    statuses: set[str] = field(default_factory=set)  # of a request after each run

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
        return recovered_at(self.polls[server], self.kill_at)

    @property
    def both_ok_after(self) -> float | None:
        times = [self.recovered_at(i)[0] for i in range(len(self.polls))]
        return None if any(t is None for t in times) else max(t for t in times if t is not None) - self.kill_at

    @property
    def first_redis_hit_after(self) -> float | None:
        return first_redis_hit(self.answers, [self.recovered_at(i)[0] for i in range(len(self.polls))], self.kill_at)

    @property
    def lost_blind(self) -> list[Lost]:
        """The lost answers whose refresh was sent while server 1's /healthz did not say "ok" (it had no Redis)."""
        return [x for x in self.lost if self.state_at(0, x.refresh.sent) != "ok"]

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


# --- working it out --------------------------------------------------------------------------------------


def recovered_at(polls: list[Poll], kill_at: float) -> tuple[float | None, int]:
    after = [p for p in list(polls) if p.at >= kill_at]
    bad = [p for p in after if p.state != "ok"]
    if not bad:
        return (kill_at if after else None), 0
    return next((p.at for p in after if p.at > bad[-1].at and p.state == "ok"), None), len(bad)


def first_redis_hit(answers: list[Answer], recovered: list[float | None], kill_at: float) -> float | None:
    """Seconds from the kill to the first HIT from a server whose /healthz had said "ok" again (so it read Redis)."""
    times = []
    for a in answers:
        back = recovered[a.server]
        if a.error is None and a.status == "HIT" and a.sent >= kill_at and back is not None and a.sent >= back:
            times.append(a.received)
    return min(times) - kill_at if times else None


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


def seconds_text(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


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
                f"| {c.rps_range} | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.failed} | {_ratio(c.rps, base.rps)} "
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
         "| requests | errors | refreshes sent / failed | refreshes lost (after a refresh sent while server 1 was not ok) "
         "| generation before → at promotion → after "
         "| after ≥ before |"),
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        per_server = " / ".join(
            f"{seconds_text(at - r.kill_at if at is not None else None)} ({bad} polls not ok)"
            for at, bad in (r.recovered_at(i) for i in range(len(r.polls))))
        failed = sum(1 for x in r.refreshes if x.error)
        ok_generation = (r.generation_before is not None and r.generation_after is not None
                         and r.generation_after >= r.generation_before)
        lines.append(
            f"| {r.mode} | {r.killed} → {r.promoted} | {r.promoted_after:.2f} s | {per_server} | {seconds_text(r.both_ok_after)} "
            f"| {seconds_text(r.first_redis_hit_after)} | {len(r.answers):,} | {len(r.errors)} | {len(r.refreshes)} / {failed} "
            f"| {len(r.lost)} ({len(r.lost_blind)}) | {r.generation_before} → {r.generation_promoted} → {r.generation_after} "
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
            sent = ", ".join(f"{x.sent - r.kill_at:+.2f} s" for x in r.refreshes if x.error)
            notes.append("failed refreshes: " + "; ".join(f"{n} × `{k}`" for k, n in refresh_kinds.most_common(5))
                         + f" (sent at {sent} from the kill)")
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


_ROUTINE = "gql.schema: cache refreshed:"  # every refreshCache is logged at warning: counted, not shown


def logs_section(logs: dict[str, list[str]], per_server: int = 8, trace_lines: int = 30) -> list[str]:
    """What the servers logged besides the routine refresh lines: the first few per server, and every ERROR line
    with the traceback that follows it (up to `trace_lines` lines each)."""
    noisy = {name: lines for name, lines in logs.items() if lines}
    if not noisy:
        return ["## Server logs (fleet)", "", "No server logged anything at warning level or above.", ""]
    lines = ["## Server logs (fleet)", "", ("What the servers logged (warning and above), per server: how many lines, how "
             "many of them the routine \"cache refreshed\" line of each refreshCache; the first other warnings; and "
             "each ERROR line with its traceback. A server's query worker process logs to the same file."), "", "```"]
    for name, logged in noisy.items():
        routine = sum(1 for line in logged if _ROUTINE in line)
        other = [line for line in logged if _ROUTINE not in line and line[:4].isdigit() and " ERROR " not in line[:40]]
        lines.append(f"{name}: {len(logged)} lines, {routine} of them \"cache refreshed\"")
        lines += [f"  {line[:240]}" for line in other[:per_server]]
        if len(other) > per_server:
            lines.append(f"  ... {len(other) - per_server} more")
        for i, line in enumerate(logged):
            if " ERROR " in line[:40]:
                following = []
                for more in logged[i + 1:i + 1 + trace_lines]:
                    if more[:4].isdigit():
                        break
                    following.append(more)
                lines += [f"  {line[:240]}"] + [f"    {more[:240]}" for more in following]
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
            f"Redis again after {seconds_text(r.both_ok_after)} (first HIT via Redis {seconds_text(r.first_redis_hit_after)}); "
            f"{len(r.answers):,} requests, {len(r.errors)} errors, {len(r.lost)} refreshes lost ({len(r.lost_blind)} of them after "
            f"a refresh sent while server 1 had no Redis; target 0 and 0: "
            f"{'met' if not r.errors and not r.lost else 'missed'}); generation {generation}.")
    totals = []
    for mode in MODES:
        mine = [n for n in result.nodes if n.mode == mode]
        total = sum(sum(n.counts.get("response", {}).values()) for n in mine)
        totals.append(f"{mode} {total}")
    lines.append(f"- Redis connections of one default server (server + query worker process) after part 1, all nodes "
                 f"(on Sentinel, the sentinels too): {', '.join(totals)}.")
    return lines + [""]
