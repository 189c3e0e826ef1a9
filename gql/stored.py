"""Stored whole responses: the entry format that the server and its query workers both write.

An entry is three values under one response key: `meta` (ETag, the fields with when each was computed
and for how long it is fresh, the CRC, the generations it was built under), `raw` (the body up to
`{"data":...`) and `deflate` (that prefix as a raw deflate stream ending on a byte boundary), the two
bodies named by the ETag (gql/cache/keys.py).
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from gql.cache import CacheStatus
from gql.cache.raw import RawStore
from gql.encoding import dumps
from gql.schema.report import CacheReport, FieldReport, as_json

RAW, DEFLATE = "raw", "deflate"

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS


@dataclass(frozen=True)
class StoredResponse:
    """One cached answer: its meta data plus the body prefix (raw and deflated)."""

    etag: str
    fields: tuple[tuple[str, str, float, float], ...]  # (path, field, computed at, fresh for seconds)
    raw: bytes
    deflated: bytes = b""
    crc: int = 0

    @classmethod
    def from_report(cls, raw: bytes, report: CacheReport, data_version: str) -> StoredResponse:
        """An answer to store, each field's computation time and lifetime taken from its cache report.

        The ETag covers the data version too: the body names it (extensions.dataVersion).
        """
        now = time.time()
        fields = tuple((e.path, e.field, now - e.age_seconds, e.age_seconds + e.ttl_seconds) for e in report)
        return cls(hashlib.sha256(raw + data_version.encode()).hexdigest()[:32], fields, raw)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], raw: bytes, deflated: bytes) -> StoredResponse:
        fields = tuple((str(p), str(f), float(c), float(t)) for p, f, c, t in meta["fields"])
        return cls(str(meta["etag"]), fields, raw, deflated, int(meta["crc"]))

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        """The cached fields of the answer, each once, sorted (its surrogate keys name them)."""
        return tuple(sorted({field for _, field, _, _ in self.fields}))

    @property
    def expires(self) -> float:
        return min(created + ttl for _, _, created, ttl in self.fields)

    @property
    def created(self) -> float:
        return min(created for _, _, created, _ in self.fields)

    def report(self, now: float) -> list[FieldReport]:
        return [
            FieldReport(path, field, CacheStatus.HIT, now - created, created + ttl - now)
            for path, field, created, ttl in self.fields
        ]

    def compressed(self) -> StoredResponse:
        """This answer with its deflate stream and CRC (CPU work: call it off the event loop)."""
        if self.deflated:
            return self
        return StoredResponse(self.etag, self.fields, self.raw, deflate_open(self.raw), zlib.crc32(self.raw))


def body_tail(report: CacheReport, data_version: str) -> bytes:
    """The per-request end of a body that starts with `{"data":...`, in the order the schema writes it."""
    return b',"extensions":{"cache":' + dumps(as_json(report)) + b',"dataVersion":' + dumps(data_version) + b"}}"


def deflate_open(raw: bytes) -> bytes:
    """Raw deflate of `raw` ending on a byte boundary with no final block, so a final block can follow."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_parts(deflated: bytes, crc: int, raw_length: int, tail: bytes) -> tuple[bytes, bytes, bytes]:
    """A gzip member, in the pieces it is made of (so that a large stored stream is sent without being copied):
    the header, the stored deflate stream, then `tail` as a final uncompressed block and the trailer."""
    stored_block = b"\x01" + struct.pack("<HH", len(tail), 0xFFFF ^ len(tail)) + tail
    trailer = struct.pack("<II", zlib.crc32(tail, crc), (raw_length + len(tail)) & 0xFFFFFFFF)
    return _GZIP_HEADER, deflated, stored_block + trailer


async def write(store: RawStore, key: str, generations: dict[str, int], stored: StoredResponse) -> bytes | None:
    """Store a compressed answer under the response key `key` if the generations are still current: its bodies
    under its ETag, then the meta that names them (gql/cache/keys.py).

    Returns the meta bytes written, or None when nothing was stored.
    """
    ttl = stored.expires - time.time()
    if ttl <= 0:
        return None
    meta = orjson.dumps({"etag": stored.etag, "fields": stored.fields, "crc": stored.crc, "generations": generations})
    bodies = {store.keys.response_body(key, stored.etag, part): body for part, body in ((RAW, stored.raw), (DEFLATE, stored.deflated))}
    return meta if await store.write(generations, bodies, store.keys.response_meta(key), meta, ttl) else None
