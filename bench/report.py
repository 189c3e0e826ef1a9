"""The results file: the machine, then one Markdown section per measurement."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import WrkRun, median, percentile
from bench.scaling import PartialHitRow, ScalingRow


class Rounds:
    """req/s, p50 and p99 of a measured setup: medians over its rounds (`runs`, each with rps, p50_ms, p99_ms)."""

    runs: Sequence[Any]

    @property
    def rps(self) -> float:
        return median([r.rps for r in self.runs])

    @property
    def rps_range(self) -> str:
        rates = [r.rps for r in self.runs]
        return f"{min(rates):,.0f}–{max(rates):,.0f}" if max(rates) >= 100 else f"{min(rates):.1f}–{max(rates):.1f}"

    @property
    def p50_ms(self) -> float:
        return median([r.p50_ms for r in self.runs])

    @property
    def p99_ms(self) -> float:
        return median([r.p99_ms for r in self.runs])


@dataclass(frozen=True)
class Cell(Rounds):
    """Every round of one variant on one payload, and what a warm request looked like."""

    variant: str
    title: str
    payload: str
    response_bytes: int
    cache_status: str  # of a warm request, "-" for the ceiling and Flask (not this service)
    runs: Sequence[WrkRun]


def run_standalone(prog: str, args, argv: list[str] | None, run, resolve, render) -> int:
    """`python -m bench.<prog>` on its own: run with the parsed `args`, write the report where `--output` says, print it."""
    command = f"python -m bench.{prog} " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = render(run(resolve(args)), command.strip())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    print(f"[{prog}] wrote {args.output}", file=sys.stderr, flush=True)
    return 0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(encoding="utf-8"), re.M)
        cpu = found.group(1).strip() if found else platform.processor() or cpu
    except OSError:
        pass
    memory = ""
    try:
        found_memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(encoding="utf-8"), re.M)
        if found_memory is None:
            raise AttributeError("no MemTotal")
        kib = int(found_memory.group(1))
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return (f"{os.cpu_count()} cores, {cpu}{memory}, {platform.system()} {platform.release()} {platform.machine()}, "
            f"Python {platform.python_version()}, {_version(['wrk', '--version'])}, {_version(['redis-server', '--version'])}")


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except OSError:
        return f"{command[0]} ?"
    words = (out.stdout or out.stderr).split()
    return " ".join(words[:3]) if command[0] == "redis-server" else " ".join(words[:2])


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def throughput_section(cells: list[Cell], settings: str) -> list[str]:
    lines = [
        "## Throughput and latency over HTTP",
        "",
        settings,
        "",
        ("| payload | variant | response bytes | cache | conns | requests | req/s | req/s range | p50 ms | p99 ms "
        "| req/s ÷ bare | req/s ÷ ceiling | req/s ÷ Flask | p99 ÷ bare | p99 ÷ ceiling | p99 ÷ Flask |"),
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for payload in dict.fromkeys(c.payload for c in cells):
        row = {c.variant: c for c in cells if c.payload == payload}
        bases = [row.get(name) for name in ("bare", "ceiling", "flask")]
        for c in row.values():
            errors = sum(r.errors for r in c.runs)
            note = f" ({errors} errors)" if errors else ""
            size = f"{c.response_bytes:,}" if c.response_bytes else "0 (304)"
            rps = " | ".join(_ratio(c.rps, b.rps) if b else "-" for b in bases)
            p99 = " | ".join(_ratio(c.p99_ms, b.p99_ms) if b else "-" for b in bases)
            lines.append(
                f"| {payload} | {c.title} | {size} | {c.cache_status} | {c.runs[0].connections} "
                f"| {sum(r.requests for r in c.runs):,}{note} | {c.rps:,.1f} | {c.rps_range} | {c.p50_ms:.2f} | {c.p99_ms:.2f} "
                f"| {rps} | {p99} |"
            )
    return lines + [""]


def targets_section(cells: list[Cell], loaded: dict) -> list[str]:
    """The targets of a hit (issue 15), each a ratio of two setups measured in this run."""
    cell = {(c.variant, c.payload): c for c in cells}
    rest, under = loaded["at_rest"], loaded["under_load"]
    rows = [
        ("small hit ÷ bare ASGI app, req/s", cell["full", "small"].rps, cell["bare", "small"].rps, ">=", 0.5),
        ("large hit ÷ bare ASGI app, req/s", cell["full", "large"].rps, cell["bare", "large"].rps, ">=", 0.8),
        ("2 workers ÷ 1 worker, small hit req/s", cell["full2", "small"].rps, cell["full", "small"].rps, ">=", 1.6),
        ("2 workers ÷ 1 worker, large hit req/s", cell["full2", "large"].rps, cell["full", "large"].rps, ">=", 1.6),
        ("hit p99 during cold computations ÷ at rest, ms", percentile(under, 0.99) * 1000, percentile(rest, 0.99) * 1000, "<=", 2.0),
        ("304 revalidation ÷ small hit, req/s", cell["full", "small 304"].rps, cell["full", "small"].rps, ">=", 1.0),
    ]
    lines = [
        "## Targets",
        "",
        ("Each a ratio of two setups measured in this run (the machine is shared and noisy: only ratios compare). "
         "wrk runs on the same machine as the servers, so with 2 cores it takes CPU from them, the two-worker "
         "setup most."),
        "",
        "| target | measured | ratio | goal | met |",
        "|---|---:|---:|---:|---|",
    ]
    for name, value, base, sense, goal in rows:
        ratio = value / base if base else 0.0
        met = ratio >= goal if sense == ">=" else ratio <= goal
        lines.append(f"| {name} | {value:,.2f} ÷ {base:,.2f} | {ratio:.2f} | {sense} {goal:g} | {'yes' if met else '**no**'} |")
    return lines + [""]


def cold_hit_section(rows: list[dict]) -> list[str]:
    lines = [
        "## Cold and hit over HTTP (variant 5, sequential requests)",
        "",
        ("Cold: distinct `end`/`asOf` per request, so each is a real miss (pandas work and a Redis write). "
        "Baseline: `GET /healthz` of the same server (one Redis PING, no GraphQL)."),
        "",
        "| request | response bytes | cold p50 ms | cold max ms | hit p50 ms | hit p99 ms | hit/cold (p50) | hit/baseline (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = median(rows[0]["hit"])
    for row in rows:
        hit50, hit99 = median(row["hit"]) * 1000, percentile(row["hit"], 0.99) * 1000
        if row["cold"]:
            cold50 = median(row["cold"]) * 1000
            cold_cells, ratio = f"{cold50:.1f} | {max(row['cold']) * 1000:.1f}", f"{hit50 / cold50:.2f}"
        else:
            cold_cells, ratio = "- | -", "-"
        lines.append(f"| {row['name']} | {row['bytes']:,} | {cold_cells} | {hit50:.1f} | {hit99:.1f} | {ratio} "
                     f"| {hit50 / (base * 1000):.1f}x |")
    return lines + [""]


def loaded_section(result: dict, cold_clients: int, seconds: float) -> list[str]:
    rest, under = result["at_rest"], result["under_load"]
    ratio = percentile(under, 0.99) / percentile(rest, 0.99)
    verdict = "meets" if ratio <= 2 else "misses"
    colds = result["colds"]
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(result["statuses"].items())) or "none"
    lines = [
        "## Hit latency during cold computations (variant 5)",
        "",
        (f"Sequential `yieldThisYear` hits for {seconds:g} s at rest, then for {seconds:g} s while {cold_clients} client "
        "processes (each its own interpreter, so none shares the sampler's GIL) loop over "
        "`indexChart(end: <distinct date>, frequency: DAILY)` queries that miss the cache."),
        "",
        "| condition | requests | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in (("at rest", rest), (f"during {cold_clients} cold computations", under)):
        lines.append(f"| {name} | {len(values):,} | {median(values) * 1000:.2f} | {percentile(values, 0.99) * 1000:.2f} "
                     f"| {max(values) * 1000:.2f} |")
    lines += [
        "",
        f"p99 under load / p99 at rest = **{ratio:.1f}x** ({verdict} the target of <= 2x). "
        f"Cold queries completed: {len(colds)} ({statuses}), median {median(colds) if colds else 0:.2f} s each"
        + (f"; loader errors: {'; '.join(result['errors'][:3])}" if result["errors"] else "") + ".",
        "",
    ]
    return lines


def scaling_section(rows: list[ScalingRow], runs: int) -> list[str]:
    lines = [
        "## Cold computation scaling (in process)",
        "",
        (f"`gql.analytics.index_chart(store, all codes, whole range, DAILY)` on synthetic stores of 5,040 trading days "
        f"per index; median of {runs} runs. Pandas/numpy only: no cache, no GraphQL, no HTTP."),
        "",
        "| indexes | points | time per computation ms | time per point µs | per point vs smallest |",
        "|---:|---:|---:|---:|---:|",
    ]
    first = rows[0].us_per_point
    for row in rows:
        lines.append(f"| {row.indexes:,} | {row.points:,} | {row.seconds * 1000:,.1f} | {row.us_per_point:.3f} "
                     f"| {row.us_per_point / first:.2f} |")
    spread = max(r.us_per_point for r in rows) / min(r.us_per_point for r in rows)
    verdict = "grows linearly (time per point roughly constant)" if spread <= 1.5 else "does not grow linearly"
    return lines + ["", f"Time per point varies by {spread:.2f}x across sizes: the computation {verdict}.", ""]


def partial_hits_section(rows: list[PartialHitRow], runs: int) -> list[str]:
    lines = [
        "## Partial hits: chart variants from the cached daily series (in process)",
        "",
        ("10 indexes x 5,040 trading days. From prices: the memoized daily series of each index is dropped first, "
        f"so it is built from the prices (dates formatted, logs taken) and then sliced. From the cached series: the "
        f"same call again, slicing and resampling the memoized series. Median of {runs} runs."),
        "",
        "| variant | from prices ms | from cached series ms | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.variant} | {row.from_prices * 1000:.2f} | {row.from_series * 1000:.2f} | "
                     f"{row.from_prices / row.from_series:.1f}x |")
    return lines + [""]


_INFO_LINE = re.compile(r"^\S+ \S+ INFO \[")  # gql.logs.TEXT_FORMAT at INFO: the access lines, startup lines


def logs_section(logs: dict[str, list[str]], per_server: int = 5) -> list[str]:
    """What the servers logged at warning and above (the access lines left out): a degraded cache shows up here first."""
    logs = {name: [line for line in lines if not _INFO_LINE.match(line)] for name, lines in logs.items()}
    noisy = {name: lines for name, lines in logs.items() if lines}
    if not noisy:
        return ["## Server logs", "", "No server logged anything at warning level or above.", ""]
    lines = ["## Server logs", "", "Lines the servers logged (warning level and above), first few per server:", "", "```"]
    for name, logged in noisy.items():
        lines += [f"{name}: {len(logged)} lines"] + [f"  {line[:300]}" for line in logged[:per_server]]
    return lines + ["```", ""]


def render(sections: list[list[str]], command: str, elapsed: float, load: tuple[float, float]) -> str:
    head = [
        "# Benchmark: the cached GraphQL service against its ceiling and the Flask original",
        "",
        f"Machine: {machine()}.",
        (f"Run: {dt.datetime.now().isoformat(timespec='seconds')}, `{command}`, {elapsed:.0f} s in all. "
        f"1-minute load average {load[0]:.2f} before, {load[1]:.2f} at the end of the HTTP measurements "
        "(other work on the machine skews results; on a 2-core machine the bench itself uses most of it)."),
        "",
    ]
    return "\n".join(head + [line for section in sections for line in section])
