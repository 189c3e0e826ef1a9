"""The code version that goes into every cache key, so a deploy never serves what older code wrote.

A digest of all of the package's sources: a cached value depends on the analytics, an answer on the
schema, completion and encoding too, and a fix anywhere (for example to which data a value was
computed from) must retire the entries the faulty code wrote. The cost is a cold cache after every
deploy that changes the code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_version(package: Path) -> str:
    """A digest of the Python sources in `package` and its subpackages (their paths included)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


CODE_VERSION = code_version(Path(__file__).resolve().parent)
