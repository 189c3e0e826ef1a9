"""Servers of the suite's own: redis-server on a free port, `python -m gql serve` as a user runs it, and an
app served by uvicorn in the test's process (to mount it under a path prefix, say)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import redis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of the suite's own, which tests may stop, freeze, thaw and restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not on PATH; the tests need a real Redis (apt-get install redis-server)")
        self.port = port or free_port()
        self.workdir = workdir
        self.log: Path | None = None  # where its output goes, when set; shown when it does not start
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line (tests/support/topologies.py runs others: cluster nodes, sentinels, TLS)."""
        assert REDIS_SERVER is not None, "redis-server is not on PATH"
        return [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]

    def start(self) -> None:
        with self.log.open("ab") if self.log else open(os.devnull, "wb") as output:
            self.process = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT)
        client = self.client(socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    client.close()
                    self.stop()  # one that hangs would otherwise outlive the test
                    raise RuntimeError(f"redis-server on port {self.port} did not start{self._log_tail()}") from None
                time.sleep(0.02)
        client.close()

    def _log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "; the end of its output:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self, socket_timeout: float = 2) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=socket_timeout)


ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m gql` runs there


class ServerProcess:
    """`python -m gql serve` on a free port, as a user runs it, in its own process group (so that
    teardown, or `kill`, reaches its query worker processes too).

    The environment is this one without GQL_* variables and PROMETHEUS_MULTIPROC_DIR (a developer's must
    not change what tests see), plus REDIS_URL, a private cache prefix, and `env`. Output goes to `log` (a temporary file
    when not given), shown when the server does not start.
    """

    def __init__(self, redis_url: str, env: dict[str, str], args: tuple[str, ...] = (), log: Path | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GQL_") and k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
        environ |= {"REDIS_URL": redis_url, "GQL_CACHE_PREFIX": f"srv-{uuid.uuid4().hex[:8]}", "GQL_LOG_LEVEL": "warning", **env}
        self.prefix = environ["GQL_CACHE_PREFIX"]
        self._own_log = log is None
        self.log = Path(tempfile.mkstemp(prefix="gql-serve-", suffix=".log")[1]) if log is None else log
        self._output = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gql", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=environ, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, deadline: float) -> None:
        while True:
            try:
                if httpx2.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group at once: the server and its query workers die mid-work."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def reap(self) -> None:
        """Wait for the server to end (after `terminate`), then end anything of its group still there."""
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._output.close()
        if self._own_log:
            self.log.unlink(missing_ok=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> set[int]:
        """The live uvicorn worker processes of a `--workers N` server: its children that multiprocessing spawned
        (found in /proc, as `ps` would; its resource tracker is not spawn_main, query workers are grandchildren)."""
        return spawned_children(self.process.pid)


def spawned_children(parent: int) -> set[int]:
    """Live processes that `parent` started with multiprocessing's spawn (ended ones not yet reaped excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == parent and state not in ("Z", "X") and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


@contextlib.contextmanager
def running_server(redis_url: str, *args: str, log: Path | None = None, **env: str) -> Iterator[str]:
    """A ServerProcess, ready; yields its base URL and stops it at the end."""
    server = ServerProcess(redis_url, env, args, log)
    try:
        server.wait_ready(time.monotonic() + 60)
        yield server.base
    finally:
        server.terminate()
        server.reap()


# --- the app in this process, over real HTTP ---------------------------------------------------------


def prefixed(app: Starlette, prefix: str) -> Starlette:
    """`app` mounted under `prefix`, as a bigger app or `uvicorn --root-path` serves it (the app's own lifespan runs)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with app.router.lifespan_context(app):
            yield

    return Starlette(routes=[Mount(prefix, app=app)], lifespan=lifespan)


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """`app` served by uvicorn in this process (a thread of its own) on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
