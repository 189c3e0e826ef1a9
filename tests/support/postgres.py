"""A PostgreSQL server of a test's own (initdb and pg_ctl on a free port), which the test may stop, freeze,
thaw and start again. Run as the `postgres` user when the suite runs as root (PostgreSQL refuses root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.servers import free_port

INITDB = shutil.which("initdb")
PG_CTL = shutil.which("pg_ctl")


class PrivatePostgres:
    def __init__(self, workdir: Path) -> None:
        if INITDB is None or PG_CTL is None:
            raise RuntimeError("initdb and pg_ctl are not on PATH; the database fault tests need PostgreSQL's server programs")
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres")
        self._run(INITDB, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        assert PG_CTL is not None
        self._run(PG_CTL, "-D", str(self.data), "-o", options, "-l", str(self.workdir / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        """As an operator stops it: connections are closed, what was committed stays."""
        self.thaw()
        assert PG_CTL is not None
        subprocess.run([*self._as, PG_CTL, "-D", str(self.data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)

    def _pids(self) -> list[int]:
        """The postmaster and every backend it started."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids, todo = [], [postmaster]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo += [int(child) for child in (task / "children").read_text().split()]
                except OSError:
                    pass
        return pids

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
