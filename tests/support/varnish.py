"""A varnishd of the test's own (deploy/varnish.vcl, the backend set to a test server), on a free port."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx2

from tests.support.servers import ROOT, free_port

VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if Path("/usr/sbin/varnishd").exists() else None)
VCL = ROOT / "deploy" / "varnish.vcl"


class Varnish:
    """varnishd in the foreground (-F) with its own working directory (-n), no privilege separation (-j none:
    the suite may run as root, and the working directory is the test's)."""

    def __init__(self, workdir: Path, backend_port: int, port: int | None = None) -> None:
        if VARNISHD is None:
            raise RuntimeError("varnishd is not on PATH; run sh tests/ensure-varnish.sh (apt-get install varnish varnish-modules)")
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.vcl = workdir / "varnish.vcl"
        self.vcl.write_text(with_backend(VCL.read_text(), "127.0.0.1", backend_port))
        self.log = workdir / "varnishd.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        assert VARNISHD is not None
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [VARNISHD, "-F", "-j", "none", "-n", str(self.workdir / "n"), "-a", f"127.0.0.1:{self.port}", "-f", str(self.vcl),
                 "-s", "malloc,64m", "-T", "none", "-p", "default_ttl=120"],
                stdout=output, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(f"{self.base}/healthz", timeout=1)  # passed to the backend: any answer means Varnish listens
                return
            except httpx2.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"varnishd did not start:\n{self.log.read_text(errors='replace')}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def with_backend(vcl: str, host: str, port: int) -> str:
    """deploy/varnish.vcl with its backend at host:port (what an operator edits)."""
    replaced, count = re.subn(r'(backend default \{\s*\.host = )"[^"]*";(\s*\.port = )"[^"]*";', rf'\1"{host}";\g<2>"{port}";', vcl)
    assert count == 1, "deploy/varnish.vcl no longer has the backend default { .host = ...; .port = ...; } this replaces"
    return replaced
