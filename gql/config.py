"""Settings, read once from the environment at startup and passed down."""

from __future__ import annotations

import enum
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gql.schedule import parse_time_of_day

# The longest freshness GQL_HTTP_* may give downstream caches (a year: more is no use to any cache).
MAX_SECONDS = 365 * 86400
# PURGE and BAN for Varnish (deploy/varnish.vcl takes both) and the like; POST for Fastly's purge API.
PURGE_METHODS = ("PURGE", "BAN", "POST")
PURGE_STYLES = ("surrogate", "cloudflare")  # gql/downstream.py, PurgeStyle

if TYPE_CHECKING:
    from gql.db.tables import Names


class ConfigError(ValueError):
    """An environment variable has a value the service cannot use."""


class RedisMode(enum.Enum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"  # REDIS_URL names any node; the client discovers the others
    SENTINEL = "sentinel"  # the sentinels name the master; REDIS_URL gives scheme, credentials and db


@dataclass(frozen=True)
class Topology:
    """Where Redis is and how to log in (gql/cache/connect.py makes the clients)."""

    mode: RedisMode
    url: str
    password: str | None = None  # overrides the URL's (GQL_REDIS_PASSWORD: a secret kept out of the URL)
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    sentinel_password: str | None = None


@dataclass(frozen=True)
class Settings:
    """Every setting with its default; `from_env` reads the `GQL_*` variables and `REDIS_URL`."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    # standalone (one server), cluster (REDIS_URL names any node) or sentinel (GQL_REDIS_SENTINELS name the master).
    redis_mode: str = "standalone"
    # The Redis password, when it is kept out of REDIS_URL (a mounted secret); overrides the URL's.
    redis_password: str | None = None
    # Sentinel mode: host:port,host:port,... of the sentinels, the master's name, and the sentinels' own password.
    redis_sentinels: str = ""
    redis_sentinel_service: str = ""
    redis_sentinel_password: str | None = None
    # A request with a good answer in hand (a kept response) waits this long for Redis, not the whole
    # GQL_REDIS_TIMEOUT: it answers from memory and lets the Redis call finish in the background.
    redis_soft_timeout: float = 0.02
    # refreshCache returns once this many replicas hold the new generation (WAIT), or after
    # GQL_REDIS_REFRESH_WAIT seconds; unset: 1 in cluster and sentinel mode, 0 standalone.
    redis_refresh_replicas: int | None = None
    redis_refresh_wait: float = 0.5
    # Connect and read bound for each Redis call, in seconds: a slow Redis must not stall requests.
    redis_timeout: float = 0.1
    # Bound for writing cached values: done after the answer is computed, never awaited by a request.
    redis_write_timeout: float = 1.0
    # Circuit breaker: after this many consecutive failed Redis calls, serve from the in-process cache...
    redis_breaker_failures: int = 3
    # ...for this many seconds, then probe Redis again.
    redis_retry_seconds: float = 5.0
    data_dir: Path | None = None
    # Follow GQL_DATA_DIR with a file watcher (false: changes are picked up only by refreshCache).
    data_watch: bool = True
    # Prices from a database instead (postgresql://... or mysql://...; see gql/db/): it is then the whole data set.
    database_url: str | None = None
    # Bound of each database call on the way to a pickup (connect, version check, change log), in seconds...
    database_timeout: float = 5.0
    # ...and of a full load (millions of closes).
    database_load_timeout: float = 600.0
    # MariaDB/MySQL: how often each process reads the version row (PostgreSQL is told by NOTIFY, and checks
    # this often only while its listening connection is down).
    database_poll_seconds: float = 0.5
    # Tables under other names: TABLE:CODE,NAME,SOURCE and TABLE:CODE,DATE,CLOSE (gql/db/tables.py).
    database_index_table: str = ""
    database_close_table: str = ""
    cache_enabled: bool = True
    cache_prefix: str = "gql"
    chart_ttl: float = 3600.0
    yield_ttl: float = 43200.0
    # Day-level data: new closes are published once a trading day (see gql/schedule.py).
    timezone: str = "Asia/Shanghai"
    publication_time: str = "15:30"
    # Results live until the next publication instead of the fixed TTLs above.
    ttl_until_publication: bool = False
    # Refresh everything at this time (HH:MM, in GQL_TIMEZONE) each trading day; empty: never.
    refresh_at: str = ""
    # After its TTL a result is still answered at once (STALE) for this long while it is recomputed in
    # the background; unset: as long as its TTL.
    cache_stale_seconds: float | None = None
    # How old a result may be to stand in (STALE, with the error) for a computation that fails.
    cache_fail_safe_seconds: float = 86400.0
    # After a failure that an older result stood in for, wait this long before computing it again.
    cache_fail_safe_retry_seconds: float = 30.0
    # Lease on a computation (one computation per key, fleet-wide); extended while it runs.
    cache_lease_seconds: float = 5.0
    # Lease under which a server process answers hits from its own view of the generations, with no Redis round
    # trip (gql/cache/view.py); a refresh waits at most this long for a process that stopped (0: read Redis always).
    view_lease_seconds: float = 2.0
    # TTLs are shortened by a random fraction up to this, so that results written together expire apart.
    cache_ttl_jitter: float = 0.1
    # Recompute hot results shortly before they expire (XFetch's beta; 0: never early).
    cache_early_refresh: float = 1.0
    # Fault injection for drills and tests: every computation first sleeps this long (in its thread)...
    fault_compute_delay: float = 0.0
    # ...and raises while this file exists.
    fault_compute_fail_file: Path | None = None
    local_cache_entries: int = 256
    compute_threads: int = 2
    # Worker processes for cacheable queries that miss the response cache (0: run them in the server).
    query_processes: int = 1
    admin_token: str | None = None
    # A file holding the token (a mounted secret); read at start, used when GQL_ADMIN_TOKEN is unset.
    admin_token_file: Path | None = None
    graphiql: bool = True
    introspection: bool = True
    # Comma-separated origins allowed to call the API from a browser page on another origin.
    cors_origins: str = ""
    # Comma-separated Host header values to accept; "*" accepts any.
    trusted_hosts: str = "*"
    # Limits checked before any work (see README, "Limits").
    max_body_bytes: int = 1_000_000
    max_aliases: int = 20
    max_depth: int = 10
    max_tokens: int = 1000
    max_cached_fields: int = 10
    max_codes: int = 100
    max_batch: int = 5
    # GraphQL over WebSocket (the dataChanged subscription, see docs/api.md#subscriptions), per server process.
    ws_max_connections_per_client: int = 10
    ws_max_subscriptions: int = 5
    # A connection with no subscription for this long is closed; connection_init must come within the other.
    ws_idle_seconds: float = 60.0
    ws_init_timeout: float = 10.0
    # Whole responses of cached queries (see README, "Caching whole responses").
    response_cache: bool = True
    response_memory_bytes: int = 64 * 1024 * 1024
    apq_ttl: float = 7 * 86400.0
    # Larger cached values are served but not stored.
    cache_max_entry_bytes: int = 32 * 1024 * 1024
    # Downstream caches (browsers, proxies, CDNs; gql/downstream.py): seconds they may use an answer without asking,
    # each capped at what the answer's entry has left (0, 0, 0: `public, no-cache`, revalidated with a 304 each time).
    http_max_age: int = 0
    http_shared_max_age: int = 0
    http_stale_while_revalidate: int = 0
    # Comma-separated URLs that refreshCache and new data versions send purge requests to (empty: none).
    purge_urls: str = ""
    purge_method: str = "PURGE"
    # surrogate (xkey-purge / Surrogate-Key headers: Varnish, Fastly) or cloudflare (POST {"tags": [...]}).
    purge_style: str = "surrogate"
    # Extra headers of each purge request, "Name: value; Name2: value2" (an API token, say).
    purge_headers: str = ""
    # Bound of each purge attempt, in seconds; refreshCache waits for its purge at most this long.
    purge_timeout: float = 2.0
    log_level: str = "info"
    log_json: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = _ENV_NAMES.get(field.name, "GQL_" + field.name.upper())
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(name, raw.strip(), str(field.type))  # a string: annotations are postponed
        if "admin_token" not in values and values.get("admin_token_file") is not None:
            values["admin_token"] = _read_token_file(values["admin_token_file"])
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @property
    def trusted_host_list(self) -> list[str]:
        return _split(self.trusted_hosts) or ["*"]

    def validate(self) -> None:
        seconds = (
            self.redis_timeout, self.redis_write_timeout, self.redis_retry_seconds, self.chart_ttl, self.yield_ttl, self.apq_ttl,
            self.cache_fail_safe_seconds, self.cache_fail_safe_retry_seconds, self.cache_lease_seconds, self.cache_ttl_jitter,
            self.cache_early_refresh, self.fault_compute_delay, 0.0 if self.cache_stale_seconds is None else self.cache_stale_seconds,
            self.ws_idle_seconds, self.ws_init_timeout, self.redis_soft_timeout, self.redis_refresh_wait,
            self.view_lease_seconds, self.purge_timeout,
        )
        checks = [
            (all(math.isfinite(v) for v in seconds), "every GQL_* time, jitter or factor setting must be a finite number"),
            (self.log_level.lower() in _LOG_LEVELS, f"GQL_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}"),
            (self.port > 0 and self.port < 65536, "GQL_PORT must be between 1 and 65535"),
            (self.workers >= 1, "GQL_WORKERS must be at least 1"),
            (self.redis_timeout > 0, "GQL_REDIS_TIMEOUT must be a positive number of seconds"),
            (self.redis_write_timeout > 0, "GQL_REDIS_WRITE_TIMEOUT must be a positive number of seconds"),
            (self.redis_soft_timeout > 0, "GQL_REDIS_SOFT_TIMEOUT must be a positive number of seconds"),
            (self.redis_refresh_wait > 0, "GQL_REDIS_REFRESH_WAIT must be a positive number of seconds"),
            (
                self.redis_refresh_replicas is None or self.redis_refresh_replicas >= 0,
                "GQL_REDIS_REFRESH_REPLICAS must be >= 0 (0: do not wait for replicas)",
            ),
            (self.redis_breaker_failures >= 1, "GQL_REDIS_BREAKER_FAILURES must be at least 1"),
            (self.redis_retry_seconds >= 0, "GQL_REDIS_RETRY_SECONDS must be >= 0"),
            (
                self.cache_stale_seconds is None or self.cache_stale_seconds >= 0,
                "GQL_CACHE_STALE_SECONDS must be >= 0 (0: no stale answers)",
            ),
            (self.cache_fail_safe_seconds >= 0, "GQL_CACHE_FAIL_SAFE_SECONDS must be >= 0 (0: no fail-safe)"),
            (self.cache_fail_safe_retry_seconds >= 0, "GQL_CACHE_FAIL_SAFE_RETRY_SECONDS must be >= 0"),
            (self.cache_lease_seconds >= 0.1, "GQL_CACHE_LEASE_SECONDS must be at least 0.1"),
            (
                self.view_lease_seconds == 0 or 0.2 <= self.view_lease_seconds <= 60,
                "GQL_VIEW_LEASE_SECONDS must be 0 (hits read Redis always) or from 0.2 to 60 seconds",
            ),
            (0 <= self.cache_ttl_jitter < 1, "GQL_CACHE_TTL_JITTER must be a fraction from 0 up to (not including) 1"),
            (self.cache_early_refresh >= 0, "GQL_CACHE_EARLY_REFRESH must be >= 0 (0: never recompute before expiry)"),
            (self.fault_compute_delay >= 0, "GQL_FAULT_COMPUTE_DELAY must be >= 0"),
            (self.chart_ttl > 0, "GQL_CHART_TTL must be a positive number of seconds"),
            (self.yield_ttl > 0, "GQL_YIELD_TTL must be a positive number of seconds"),
            (self.local_cache_entries >= 0, "GQL_LOCAL_CACHE_ENTRIES must be >= 0 (0: no in-process fallback cache)"),
            (self.compute_threads >= 1, "GQL_COMPUTE_THREADS must be at least 1"),
            (self.query_processes >= 0, "GQL_QUERY_PROCESSES must be >= 0"),
            (bool(self.cache_prefix), "GQL_CACHE_PREFIX must not be empty"),
            ("{" not in self.cache_prefix and "}" not in self.cache_prefix,
             "GQL_CACHE_PREFIX must not hold { or }: the cache puts its own hash tags into its key names"),
            (self.max_body_bytes >= 1024, "GQL_MAX_BODY_BYTES must be at least 1024"),
            (self.max_aliases >= 0, "GQL_MAX_ALIASES must be >= 0"),
            (self.max_depth >= 1, "GQL_MAX_DEPTH must be at least 1"),
            (self.max_tokens >= 10, "GQL_MAX_TOKENS must be at least 10"),
            (self.max_cached_fields >= 1, "GQL_MAX_CACHED_FIELDS must be at least 1"),
            (self.max_codes >= 1, "GQL_MAX_CODES must be at least 1"),
            (self.max_batch >= 1, "GQL_MAX_BATCH must be at least 1"),
            (self.ws_max_connections_per_client >= 1, "GQL_WS_MAX_CONNECTIONS_PER_CLIENT must be at least 1"),
            (self.ws_max_subscriptions >= 1, "GQL_WS_MAX_SUBSCRIPTIONS must be at least 1"),
            (self.ws_idle_seconds > 0, "GQL_WS_IDLE_SECONDS must be a positive number of seconds"),
            (self.ws_init_timeout > 0, "GQL_WS_INIT_TIMEOUT must be a positive number of seconds"),
            (self.response_memory_bytes >= 0, "GQL_RESPONSE_MEMORY_BYTES must be >= 0"),
            (self.apq_ttl > 0, "GQL_APQ_TTL must be a positive number of seconds"),
            (self.cache_max_entry_bytes >= 1024, "GQL_CACHE_MAX_ENTRY_BYTES must be at least 1024"),
            *(
                (0 <= value <= MAX_SECONDS, f"{name} must be a whole number of seconds from 0 to {MAX_SECONDS} (0: not sent)")
                for name, value in (
                    ("GQL_HTTP_MAX_AGE", self.http_max_age), ("GQL_HTTP_SHARED_MAX_AGE", self.http_shared_max_age),
                    ("GQL_HTTP_STALE_WHILE_REVALIDATE", self.http_stale_while_revalidate),
                )
            ),
            (0 < self.purge_timeout <= 30, "GQL_PURGE_TIMEOUT must be a number of seconds above 0, at most 30"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"GQL_TIMEZONE={self.timezone!r} is not a known time zone, e.g. Asia/Shanghai or UTC") from None
        for name, value in (("GQL_PUBLICATION_TIME", self.publication_time), ("GQL_REFRESH_AT", self.refresh_at)):
            if value:
                try:
                    parse_time_of_day(value)
                except ValueError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
        _check_redis_url(self.redis_url)
        self.redis_topology()
        _check_purging(self)
        if self.database_url is not None:
            self._check_database()

    def _check_database(self) -> None:
        from gql.db.connect import DatabaseUrlError, database_url

        try:
            database_url(self.database_url or "")
            self.database_names()
        except DatabaseUrlError as exc:
            raise ConfigError(str(exc)) from None
        except ValueError as exc:
            raise ConfigError(f"GQL_DATABASE_INDEX_TABLE / GQL_DATABASE_CLOSE_TABLE: {exc}") from None
        if self.data_dir is not None:
            raise ConfigError("GQL_DATABASE_URL and GQL_DATA_DIR are both set: the data comes from one of them; unset one")
        for name, value in (("GQL_DATABASE_TIMEOUT", self.database_timeout), ("GQL_DATABASE_LOAD_TIMEOUT", self.database_load_timeout),
                            ("GQL_DATABASE_POLL_SECONDS", self.database_poll_seconds)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds")

    def redis_topology(self) -> Topology:
        """Where Redis is, by GQL_REDIS_MODE; ConfigError saying what is missing or wrong."""
        modes = ", ".join(m.value for m in RedisMode)
        try:
            mode = RedisMode(self.redis_mode.strip().lower())
        except ValueError:
            raise ConfigError(f"GQL_REDIS_MODE={self.redis_mode!r} is not a mode; expected one of {modes}") from None
        sentinels: tuple[tuple[str, int], ...] = ()
        if mode is RedisMode.SENTINEL:
            try:
                sentinels = parse_sentinels(self.redis_sentinels)
            except ValueError as exc:
                raise ConfigError(
                    f"GQL_REDIS_SENTINELS={self.redis_sentinels!r}: {exc}; expected host:port,host:port,... of the sentinels"
                ) from None
            if not self.redis_sentinel_service:
                raise ConfigError("GQL_REDIS_SENTINEL_SERVICE is not set: the name of the master the sentinels watch")
        elif mode is RedisMode.CLUSTER and self.redis_url.startswith("unix:"):
            raise ConfigError("GQL_REDIS_MODE=cluster needs REDIS_URL as redis:// or rediss://HOST:PORT of any node")
        return Topology(
            mode, self.redis_url, self.redis_password, sentinels, self.redis_sentinel_service, self.redis_sentinel_password,
        )

    @property
    def refresh_replicas(self) -> int:
        """How many replicas a refresh waits for (GQL_REDIS_REFRESH_REPLICAS, or by mode)."""
        if self.redis_refresh_replicas is not None:
            return self.redis_refresh_replicas
        return 0 if self.redis_mode.strip().lower() == "standalone" else 1

    def database_names(self) -> Names:
        from gql.db.tables import Names  # late: SQLAlchemy is imported only when a database is used

        return Names.parse(self.database_index_table or None, self.database_close_table or None)


_ENV_NAMES = {"redis_url": "REDIS_URL"}
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _check_purging(settings: Settings) -> None:
    """GQL_PURGE_* as gql/downstream.py reads them."""
    for url in _split(settings.purge_urls):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"GQL_PURGE_URLS: {url!r} is not an http:// or https:// URL with a host; "
                              "expected comma-separated URLs such as http://127.0.0.1:6081/")
        try:
            _ = parts.port  # ValueError when out of range
        except ValueError:
            raise ConfigError(f"GQL_PURGE_URLS: {url!r} has no valid port") from None
    if settings.purge_method.strip().upper() not in PURGE_METHODS:
        raise ConfigError(f"GQL_PURGE_METHOD={settings.purge_method!r} is not allowed; expected one of {', '.join(PURGE_METHODS)}")
    if settings.purge_style.strip().lower() not in PURGE_STYLES:
        raise ConfigError(f"GQL_PURGE_STYLE={settings.purge_style!r} is not a style; expected one of {', '.join(PURGE_STYLES)}")
    try:
        parse_headers(settings.purge_headers)
    except ValueError as exc:
        raise ConfigError(f"GQL_PURGE_HEADERS: {exc}; expected 'Name: value; Name2: value2'") from None


def _check_redis_url(url: str) -> None:
    """REDIS_URL read by redis-py itself, as the cache will read it: a URL it refuses stops every command here."""
    import redis.asyncio
    from redis.exceptions import RedisError

    try:
        # Parses the URL and builds a connection from it; connects to nothing.
        redis.asyncio.ConnectionPool.from_url(url).make_connection()
    except (ValueError, TypeError, RedisError) as exc:  # TypeError: an option redis-py does not know
        raise ConfigError(
            f"REDIS_URL is not usable: {exc}; expected e.g. redis://127.0.0.1:6379/0, rediss://HOST:PORT/DB "
            "or unix:///path/to/redis.sock"
        ) from None


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"GQL_ADMIN_TOKEN_FILE={str(path)!r} cannot be read: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"GQL_ADMIN_TOKEN_FILE={str(path)!r} is empty")
    return token


def _parse(name: str, raw: str, kind: str) -> object:
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind in ("float", "float | None"):
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError
            return number
        if kind == "bool":
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError
        if kind == "Path | None":
            return Path(raw).expanduser()
    except ValueError:
        allowed = {
            "int": "a whole number", "int | None": "a whole number", "float": "a finite number", "float | None": "a finite number",
            "bool": "true/false, yes/no, on/off or 1/0",
        }[kind]
        raise ConfigError(f"{name}={raw!r} is not valid: expected {allowed}") from None
    return raw


def without_password(url: str) -> str:
    """A URL as logs and messages may show it: the password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_headers(value: str) -> tuple[tuple[str, str], ...]:
    """`Name: value; Name2: value2` (or one per line) as pairs; ValueError naming what is wrong."""
    found = []
    for part in (p.strip() for p in value.replace("\n", ";").split(";")):
        if not part:
            continue
        name, sep, text = part.partition(":")
        name, text = name.strip(), text.strip()
        if not sep or not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
            raise ValueError(f"{part!r} is not 'Name: value'")
        if "\r" in text:
            raise ValueError(f"the value of {name} holds a line break")
        found.append((name, text))
    return tuple(found)


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` as (host, port) pairs; ValueError naming what is wrong."""
    found = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    if not found:
        raise ValueError("no sentinel given")
    return tuple(found)
