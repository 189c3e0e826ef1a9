"""The frontend client scripts of tests/clients (Apollo Client, urql), run with Node against a server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
INSTALL = "run npm ci --prefix tests/clients (make test does it)"


def run_client(script: str, base: str, *, clients: Path = CLIENTS, timeout: float = 120, **env: str) -> dict:
    """Run `node <clients>/<script>.mjs <base>` and return the one JSON document it prints.

    A missing Node or missing packages fail the test (not skip it), saying what to do.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the client tests need Node.js 20 or later", pytrace=False)
    if not (clients / "node_modules" / ".package-lock.json").exists():
        pytest.fail(f"{clients}/node_modules is missing: {INSTALL}", pytrace=False)
    environ = {**os.environ, **env}
    try:
        done = subprocess.run(
            [node, str(clients / f"{script}.mjs"), base], cwd=clients, env=environ, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"{script}.mjs did not finish in {timeout} s; stderr:\n{stderr}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{script}.mjs exited with {done.returncode}; stderr:\n{done.stderr}", pytrace=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_typename(value):
    """`value` without the `__typename` fields that Apollo Client and urql add to every selection."""
    if isinstance(value, dict):
        return {k: without_typename(v) for k, v in value.items() if k != "__typename"}
    if isinstance(value, list):
        return [without_typename(v) for v in value]
    return value
