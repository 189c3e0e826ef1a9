"""gql/stored.py: the stored-response format the server and its query workers both write, through its
public names and a real Redis for the round trip."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest

from gql.cache import CacheStatus, ResultCache
from gql.config import Settings
from gql.schema.report import FieldReport, storable
from gql.stored import DEFLATE, RAW, StoredResponse, body_tail, deflate_open, gzip_parts, write

PREFIX = b'{"data":' + orjson.dumps({"yieldThisYear": [{"code": "HSI", "yieldPct": 1.25, "name": "恒生指数"}] * 200})


def report(*entries: tuple[str, str, float, float], status: str = "MISS") -> list[FieldReport]:
    """A cache report as the schema makes it: (path, field, ageSeconds, ttlSeconds) per cached field."""
    return [FieldReport(p, f, CacheStatus(status), age, ttl) for p, f, age, ttl in entries]


# --- what may be stored ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [([], False), (["MISS"], True), (["HIT", "MISS", "REFRESHED"], True), (["HIT", "STALE"], False), (["STALE"], False)],
)
def test_storable_only_with_cached_fields_and_none_stale(statuses, expected):
    assert storable([FieldReport(f"f{i}", "yieldThisYear", CacheStatus(s), 0.0, 60.0) for i, s in enumerate(statuses)]) is expected


# --- an answer and its cache report ------------------------------------------------------------------


def test_from_report_keeps_when_each_field_was_computed_and_for_how_long_it_is_fresh():
    before = time.time()
    stored = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 10.0, 50.0), ("b", "indexChart", 2.0, 3598.0)), "v1")
    after = time.time()
    (path_a, field_a, created_a, fresh_a), (path_b, field_b, created_b, fresh_b) = stored.fields
    assert (path_a, field_a, fresh_a) == ("a", "yieldThisYear", 60.0) and (path_b, field_b, fresh_b) == ("b", "indexChart", 3600.0)
    assert before - 10 <= created_a <= after - 10 and before - 2 <= created_b <= after - 2
    assert stored.created == created_a  # the oldest field
    assert stored.expires == pytest.approx(created_a + 60.0)  # the first field to go stale
    assert stored.raw == PREFIX and stored.deflated == b"" and stored.crc == 0


def test_its_report_says_hit_with_ages_and_lifetimes_now():
    stored = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 10.0, 50.0)), "v1")
    created = stored.fields[0][2]
    [entry] = stored.report(created + 30.0)
    assert entry.as_json() == {"path": "a", "field": "yieldThisYear", "status": "HIT", "ageSeconds": 30.0, "ttlSeconds": 30.0}


def test_the_etag_covers_the_body_and_the_data_version():
    entries = report(("a", "yieldThisYear", 0.0, 60.0))
    etag = StoredResponse.from_report(PREFIX, entries, "v1").etag
    assert len(etag) == 32 and int(etag, 16) >= 0
    assert StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 5.0, 55.0)), "v1").etag == etag  # not the timing
    assert StoredResponse.from_report(PREFIX, entries, "v2").etag != etag
    assert StoredResponse.from_report(PREFIX + b" ", entries, "v1").etag != etag


def test_body_tail_ends_the_body_with_the_report_and_the_data_version():
    entries = report(("a", "yieldThisYear", 1.5, 58.5), status="HIT")
    body = orjson.loads(PREFIX + body_tail(entries, "f833c27b7896f8c2"))
    assert body["data"] == orjson.loads(PREFIX[len(b'{"data":'):])
    assert body["extensions"] == {"cache": [e.as_json() for e in entries], "dataVersion": "f833c27b7896f8c2"}
    assert list(body) == ["data", "extensions"] and list(body["extensions"]) == ["cache", "dataVersion"]


# --- compression -------------------------------------------------------------------------------------


def test_deflate_open_is_raw_deflate_of_the_body_left_open_on_a_byte_boundary():
    deflated = deflate_open(PREFIX)
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(deflated) == PREFIX
    assert not inflater.eof  # no final block yet: one can follow
    assert deflated.endswith(b"\x00\x00\xff\xff")  # a sync flush: ends on a byte boundary
    assert len(deflated) < len(PREFIX) / 5


@pytest.mark.parametrize("tail", [b"}", b',"extensions":{"cache":[],"dataVersion":"v"}}', b"x" * 60_000])
def test_gzip_body_decompresses_with_gzip_to_the_body_and_its_tail(tail):
    stored = StoredResponse(etag="e", fields=(), raw=PREFIX).compressed()
    body = b"".join(gzip_parts(stored.deflated, stored.crc, len(stored.raw), tail))
    assert gzip.decompress(body) == PREFIX + tail  # gzip checks the CRC and the length too
    assert body[:3] == b"\x1f\x8b\x08"


def test_gzip_body_of_an_empty_body():
    assert gzip.decompress(b"".join(gzip_parts(deflate_open(b""), zlib.crc32(b""), 0, b'{"data":null}'))) == b'{"data":null}'


def test_compressed_adds_the_deflate_stream_and_crc_once():
    stored = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 0.0, 60.0)), "v1")
    compressed = stored.compressed()
    assert compressed.deflated == deflate_open(PREFIX) and compressed.crc == zlib.crc32(PREFIX)
    assert (compressed.etag, compressed.fields, compressed.raw) == (stored.etag, stored.fields, stored.raw)
    assert compressed.compressed() is compressed


# --- the round trip through Redis ---------------------------------------------------------------------


@pytest.fixture
async def cache(settings: Settings) -> AsyncIterator[ResultCache]:
    cache = ResultCache(settings)
    yield cache
    await cache.close()




@pytest.mark.anyio
async def test_a_written_answer_reads_back_through_meta_as_the_same_answer(cache):
    stored = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 1.0, 59.0), ("b", "indexChart", 0.5, 3599.5)), "v1").compressed()
    generations, _ = await cache.raw.read(["yieldThisYear", "indexChart"], [])
    meta = await write(cache.raw, "one", generations, stored)
    assert meta is not None
    bodies = [cache.keys.response_body("one", stored.etag, part) for part in (RAW, DEFLATE)]
    _, (meta_read, raw, deflated) = await cache.raw.read([], [cache.keys.response_meta("one"), *bodies])
    assert meta_read == meta
    parsed = orjson.loads(meta_read)
    assert parsed["generations"] == generations
    back = StoredResponse.from_meta(parsed, raw, deflated)
    assert back == stored
    assert gzip.decompress(b"".join(gzip_parts(back.deflated, back.crc, len(back.raw), b"}"))) == PREFIX + b"}"


@pytest.mark.anyio
async def test_nothing_is_written_under_a_generation_that_moved_on_or_once_expired(cache, redis_server, settings):
    fresh = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 0.0, 60.0)), "v1").compressed()
    generations, _ = await cache.raw.read(["yieldThisYear"], [])
    await cache.invalidate("yieldThisYear")  # a refresh between computing and storing
    assert await write(cache.raw, "moved", generations, fresh) is None
    expired = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 61.0, -1.0)), "v1").compressed()
    current, _ = await cache.raw.read(["yieldThisYear"], [])
    assert await write(cache.raw, "expired", current, expired) is None
    assert redis_server.client().keys(f"{settings.cache_prefix}:response:*") == []


@pytest.mark.anyio
async def test_a_stored_answer_lives_as_long_as_its_shortest_field(cache, redis_server):
    stored = StoredResponse.from_report(PREFIX, report(("a", "yieldThisYear", 0.0, 30.0), ("b", "indexChart", 0.0, 3600.0)), "v1")
    stored = stored.compressed()
    assert await write(cache.raw, "ttl", {}, stored) is not None
    keys = [cache.keys.response_meta("ttl"), *(cache.keys.response_body("ttl", stored.etag, part) for part in (RAW, DEFLATE))]
    for key in keys:
        assert 28_000 < redis_server.client().pttl(key) <= 30_000


# --- moved from tests/test_responses.py -------------------------------------------------------------


def test_gzip_splice_round_trips():
    prefix = b'{"data":' + orjson.dumps({"x": list(range(5000))})
    tail = b',"extensions":{"cache":[]}}'
    body = b"".join(gzip_parts(deflate_open(prefix), __import__("zlib").crc32(prefix), len(prefix), tail))
    assert gzip.decompress(body) == prefix + tail
