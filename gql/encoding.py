"""The one JSON encoder of responses: orjson, several times faster than json at megabytes of floats."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson refuses lone surrogates, which graphql-core may echo from a variable into an error.
        return json.dumps(value, separators=(",", ":")).encode()
