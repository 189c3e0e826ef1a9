"""What browsers, proxies and CDNs in front of the service are told: Cache-Control, surrogate keys, and purges.

By default a cacheable answer says `Cache-Control: public, no-cache`: any cache may store it, but must revalidate
it before every use, and the strong ETag makes that a cheap 304 (gql/responses.py). So a refresh or new data is
seen downstream at once. GQL_HTTP_MAX_AGE, GQL_HTTP_SHARED_MAX_AGE and GQL_HTTP_STALE_WHILE_REVALIDATE let caches
keep an answer for a while instead, never past what its entry has left of its TTL; a cache that keeps answers for
long should then be purged: with GQL_PURGE_URLS set, `refreshCache` and every new data version send purge requests
naming the surrogate keys (`Surrogate-Key`, `Cache-Tag`) of what changed.

The freshness directives count from when the answer was computed, as HTTP's do with the `Age` header sent beside
them: `max-age=N` with `Age: A` leaves N - A seconds. So each directive is the configured seconds capped at what the
entry has left, plus its age: a cache keeps the answer at most the configured seconds from now, never past its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import orjson

from gql import metrics
from gql.config import Settings, parse_headers

log = logging.getLogger(__name__)

# Attempts per purge request, and the pauses between them (seconds).
PURGE_ATTEMPTS = 3
PURGE_BACKOFF = (0.25, 1.0)
# A change of the files is taken up by every process within about a second (its own watcher); one that answered a
# downstream cache from the old version meanwhile is covered by purging the old version once more after this.
REPEAT_AFTER_SECONDS = 2.0
_NO_CACHE = "public, no-cache"


class PurgeStyle(enum.Enum):
    SURROGATE = "surrogate"  # one request per URL naming the keys in headers: Varnish (xkey), Fastly
    CLOUDFLARE = "cloudflare"  # POST {"tags": [...]}: Cloudflare's purge_cache API


@dataclass(frozen=True)
class SurrogateKeys:
    """The surrogate keys of answers, under a prefix (the cache prefix, GQL_CACHE_PREFIX)."""

    prefix: str

    def field(self, field: str) -> str:
        return f"{self.prefix}:{field}"

    def data(self, version: str) -> str:
        return f"{self.prefix}:data:{version}"


@dataclass(frozen=True)
class Freshness:
    """How long downstream caches may use an answer without asking (seconds; 0: revalidate every time)."""

    max_age: int = 0
    shared_max_age: int = 0
    stale_while_revalidate: int = 0

    def cache_control(self, left: int, age: int) -> str:
        """The Cache-Control of an answer `age` seconds old whose entry is fresh for `left` seconds more."""
        if not (self.max_age or self.shared_max_age or self.stale_while_revalidate):
            return _NO_CACHE
        value = f"public, max-age={min(self.max_age, left) + age}"
        if self.shared_max_age:
            value += f", s-maxage={min(self.shared_max_age, left) + age}"
        if self.stale_while_revalidate:
            value += f", stale-while-revalidate={min(self.stale_while_revalidate, left)}"
        return value


class DownstreamHeaders:
    """The HTTP caching headers of cacheable answers; the constant parts are made once, at startup."""

    @classmethod
    def of(cls, settings: Settings) -> DownstreamHeaders:
        freshness = Freshness(settings.http_max_age, settings.http_shared_max_age, settings.http_stale_while_revalidate)
        return cls(freshness, SurrogateKeys(settings.cache_prefix))

    def __init__(self, freshness: Freshness, keys: SurrogateKeys) -> None:
        self.freshness = freshness
        self.keys = keys
        self._constant = freshness.cache_control(0, 0) if freshness == Freshness() else None
        # Answers of one query shape name the same fields and, until the data changes, the same version.
        self._encoded = lru_cache(maxsize=256)(self._encode)

    def headers(self, fields: tuple[str, ...], data_version: str, expires: float, created: float, now: float, etag: str) -> dict[str, str]:
        """Cache-Control, Age, ETag, Vary and the surrogate keys; `fields`: the answer's cached fields, sorted."""
        encoded = self.encoded(fields, data_version, expires, created, now, etag.encode("latin-1"))
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in encoded}

    def encoded(self, fields: tuple[str, ...], data_version: str, expires: float, created: float, now: float,
                etag: bytes) -> list[tuple[bytes, bytes]]:
        """`headers` as the ASGI message carries them (names lower case, latin-1 bytes), for the hit path: the
        constant parts are encoded once, not per request."""
        age = max(0, int(now - created))
        constant, surrogate, tags = self._encoded(fields, data_version)
        control = constant or self.freshness.cache_control(max(0, int(expires - now)), age).encode("latin-1")
        return [(b"cache-control", control), (b"age", str(age).encode()), (b"etag", etag), (b"vary", b"Accept-Encoding"),
                (b"surrogate-key", surrogate), (b"cache-tag", tags)]

    def _encode(self, fields: tuple[str, ...], data_version: str) -> tuple[bytes | None, bytes, bytes]:
        names = [*(self.keys.field(f) for f in fields), self.keys.data(data_version)]
        constant = self._constant.encode("latin-1") if self._constant else None
        return constant, " ".join(names).encode("latin-1"), ",".join(names).encode("latin-1")


# --- purging ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeTarget:
    """One URL purge requests go to, split once."""

    url: str
    host: str
    port: int
    tls: bool
    target: str  # path and query

    @classmethod
    def parse(cls, url: str) -> PurgeTarget:
        """ValueError naming what is wrong."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{url!r} has no valid port") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.hostname, port, parts.scheme == "https", target)

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class PurgeConfig:
    targets: tuple[PurgeTarget, ...]
    method: str = "PURGE"
    style: PurgeStyle = PurgeStyle.SURROGATE
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 2.0

    @classmethod
    def of(cls, settings: Settings) -> PurgeConfig | None:
        """The purge configuration of the settings (None: GQL_PURGE_URLS unset), which `Settings.validate` checked."""
        urls = [u.strip() for u in settings.purge_urls.split(",") if u.strip()]
        if not urls:
            return None
        targets = tuple(PurgeTarget.parse(u) for u in urls)
        return cls(targets, settings.purge_method.strip().upper(), PurgeStyle(settings.purge_style.strip().lower()),
                   parse_headers(settings.purge_headers), settings.purge_timeout)


class PurgeFailed(Exception):
    """A purge request that did not get a 2xx answer; the message says why."""


class Purger:
    """Sends purge requests naming surrogate keys to every configured URL: each with PURGE_ATTEMPTS attempts and
    backoff, counted in gql_downstream_purges_total{outcome}, a failure logged with the URL and the reason."""

    @classmethod
    def of(cls, settings: Settings) -> Purger | None:
        config = PurgeConfig.of(settings)
        return None if config is None else cls(config, SurrogateKeys(settings.cache_prefix))

    def __init__(self, config: PurgeConfig, keys: SurrogateKeys) -> None:
        self.config = config
        self.keys = keys
        self._pending: set[asyncio.Task] = set()
        self._ok = metrics.DOWNSTREAM_PURGES.labels("ok")
        self._failed = metrics.DOWNSTREAM_PURGES.labels("failed")

    async def purge(self, keys: Iterable[str], *, wait: float = 0.0) -> None:
        """Purge `keys` everywhere; wait at most `wait` seconds for it (what is left goes on in the background)."""
        names = list(dict.fromkeys(keys))
        if not names:
            return
        tasks = [asyncio.ensure_future(self._purge(target, names)) for target in self.config.targets]
        for task in tasks:
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        if wait > 0:
            await asyncio.wait(tasks, timeout=wait)

    def purge_later(self, keys: Iterable[str], delay: float) -> None:
        """Purge `keys` again after `delay` seconds, in the background."""
        names = list(keys)

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.purge(names)

        task = asyncio.ensure_future(later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for purges under way (shutdown, tests); cancel the rest."""
        if not self._pending:
            return
        pending = list(self._pending)
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()

    async def _purge(self, target: PurgeTarget, keys: list[str]) -> None:
        method, body, headers = self._request(keys)
        reason = ""
        for attempt in range(PURGE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(PURGE_BACKOFF[min(attempt - 1, len(PURGE_BACKOFF) - 1)])
            try:
                await asyncio.wait_for(_send(target, method, headers, body), self.config.timeout)
            except TimeoutError:
                reason = f"no answer within {self.config.timeout:g} s"
            except (OSError, PurgeFailed, ValueError) as exc:
                reason = str(exc) or exc.__class__.__name__
            else:
                self._ok.inc()
                return
            log.info("purging %s at %s failed (attempt %d of %d): %s", " ".join(keys), target.url, attempt + 1, PURGE_ATTEMPTS, reason)
        self._failed.inc()
        log.warning("purging downstream caches at %s failed after %d attempts: %s; keys %s stay cached there until they expire",
                    target.url, PURGE_ATTEMPTS, reason, " ".join(keys))

    def _request(self, keys: list[str]) -> tuple[str, bytes, list[tuple[str, str]]]:
        extra = list(self.config.headers)
        if self.config.style is PurgeStyle.CLOUDFLARE:
            return "POST", orjson.dumps({"tags": keys}), [("Content-Type", "application/json"), *extra]
        tags = " ".join(keys)
        # xkey-purge: deploy/varnish.vcl (vmod xkey); Surrogate-Key: Fastly's purge of several keys at once.
        return self.config.method, b"", [("xkey-purge", tags), ("Surrogate-Key", tags), *extra]


async def _send(target: PurgeTarget, method: str, headers: list[tuple[str, str]], body: bytes) -> None:
    """One HTTP/1.1 request; PurgeFailed unless the answer is a 2xx."""
    context = ssl.create_default_context() if target.tls else None
    reader, writer = await asyncio.open_connection(target.host, target.port, ssl=context)
    try:
        lines = [f"{method} {target.target} HTTP/1.1", f"Host: {target.host_header}", "Connection: close",
                 f"Content-Length: {len(body)}", "User-Agent: gql-index-cache", *(f"{n}: {v}" for n, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").strip()
        _, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not code.isdigit():
            raise PurgeFailed(f"not an HTTP answer: {status_line[:80]!r}" if status_line else "the connection closed without an answer")
        if not code.startswith("2"):
            raise PurgeFailed(f"answered {rest[:80]}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # closing a connection the other side dropped: nothing left to do
            await writer.wait_closed()
