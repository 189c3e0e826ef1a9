"""The processes the benchmark starts: redis-servers and the HTTP variants, each on a free port."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Variant:
    """One way of serving the same payloads; `expect` is the cache status of a warm request (None: not ours)."""

    key: str
    title: str
    argv: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    expect: str | None = None


@dataclass(frozen=True)
class Server:
    variant: Variant
    url: str


def bare(redis_url: str) -> Variant:
    return Variant(
        "bare", "0. bare ASGI app: the response bytes from memory",
        lambda port: [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
        {"BENCH_REDIS_URL": redis_url},
    )


def ceiling(redis_url: str) -> Variant:
    return Variant(
        "ceiling", "1. ceiling: Starlette, one Redis GET of the response bytes",
        lambda port: [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
        {"BENCH_REDIS_URL": redis_url},
    )


def flask(redis_url: str) -> Variant:
    return Variant(
        "flask", "2. original: Flask + gunicorn 8 threads, get/loads/jsonify",
        lambda port: [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "8", "--chdir", str(BENCH),
                      "-b", f"127.0.0.1:{port}", "--log-level", "warning", "flask_app:app"],
        {"BENCH_REDIS_URL": redis_url},
    )


def service(key: str, title: str, redis_url: str, run_id: str, expect: str, **env: str) -> Variant:
    """`python -m gql serve` under its own cache prefix, one worker unless `GQL_WORKERS` says otherwise, logging
    warnings and above unless `GQL_LOG_LEVEL` says otherwise."""
    return Variant(
        key, title,
        lambda port: [sys.executable, "-m", "gql", "serve", "--port", str(port)],
        {"REDIS_URL": redis_url, "GQL_CACHE_PREFIX": f"bench-{run_id}-{key}", "GQL_LOG_LEVEL": "warning", "GQL_WORKERS": "1",
         **env},
        expect=expect,
    )


def all_variants(redis_url: str, run_id: str) -> list[Variant]:
    """The variants of the throughput table. The service's at its default log level: the access line of every
    request is part of what is measured (written to the variant's log file)."""
    info = {"GQL_LOG_LEVEL": "info"}
    return [
        bare(redis_url),
        ceiling(redis_url),
        flask(redis_url),
        service("nocache", "3. service, caching off", redis_url, run_id, "BYPASS", GQL_CACHE_ENABLED="false", **info),
        service("resolver", "4. service, resolver cache only", redis_url, run_id, "HIT", GQL_RESPONSE_CACHE="false", **info),
        service("full", "5. service, all caches (defaults)", redis_url, run_id, "HIT", **info),
        service("full2", "6. service, all caches, 2 workers", redis_url, run_id, "HIT", GQL_WORKERS="2", **info),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, seconds: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001  # not up yet, whatever the reason: look again
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not come up within {seconds:.0f} s")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server is not on PATH (bench/setup.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), "redis-server", 15, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def started(variant: Variant, workdir: Path) -> Iterator[Server]:
    """Runs one variant until the block ends; its output goes to `workdir/<key>.log`, shown if it fails to start."""
    with started_all([variant], workdir) as (server,):
        yield server


@contextlib.contextmanager
def started_all(variants: list[Variant], workdir: Path) -> Iterator[list[Server]]:
    """Runs several variants at once (they start in parallel) until the block ends; all are stopped together."""
    running: list[tuple[Variant, subprocess.Popen, int, Path]] = []
    try:
        for variant in variants:
            port = free_port()
            while port in {r[2] for r in running}:  # not bound yet by the servers launched before: pick another
                port = free_port()
            # Our own settings only: GQL_* variables of the caller's shell would change what is measured.
            env = {k: v for k, v in os.environ.items() if not k.startswith("GQL_")} | variant.env
            log_path = workdir / f"{variant.key}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(variant.argv(port), cwd=variant.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((variant, proc, port, log_path))
        for variant, proc, port, log_path in running:
            try:
                wait_until(functools.partial(_listening, port), f"variant {variant.key}", proc=proc)
            except SystemExit:
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
        yield [Server(variant, f"http://127.0.0.1:{port}") for variant, _, port, _ in running]
    finally:
        for _, proc, _, _ in running:
            proc.terminate()
        for _, proc, _, _ in running:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class RedisProcess:
    """A redis-server of our own (no persistence) on a port that stays the same across restarts, for fault drills:
    `kill` (the port then refuses connections), `start` again (empty), `freeze` (SIGSTOP: connections are still
    accepted by the kernel, never answered) and `thaw` (SIGCONT). Killed when the `with` block ends."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server is not on PATH (bench/setup.sh installs it)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _listening(self.port), "redis-server", 15, self.proc)
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait(10)
            self.proc, self.frozen = None, False

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
            self.frozen = False

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
