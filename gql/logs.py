"""Logging: every line carries the id of the request it belongs to."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import itertools
import json
import logging
import logging.config
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

# "-" outside a request (startup, background work).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# What the request log line says beyond method, path and status: filled in by the layers that know
# (the GraphQL layer sets `operation` and `cache`), logged once when the response is done.
request_summary: contextvars.ContextVar[dict | None] = contextvars.ContextVar("request_summary", default=None)
access_log = logging.getLogger("gql.access")

REQUEST_ID_HEADER = "x-request-id"
# An incoming id is kept (so a proxy's id links its logs to ours) only if it is short and plain.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id(incoming: str | None) -> str:
    if incoming and _ACCEPTABLE_ID.fullmatch(incoming):
        return incoming
    # Unique, not secret: a random per-process prefix and a counter cost far less than a uuid4.
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


def note(**fields: object) -> None:
    """Add fields to the current request's log line."""
    summary = request_summary.get()
    if summary is not None:
        summary.update(fields)


def log_request(scope: Mapping[str, Any], summary: dict[str, Any], seconds: float) -> None:
    method, path, status, duration = scope.get("method"), scope.get("path"), summary.get("status"), round(seconds * 1000, 2)
    # The cache report (gql.schema.report.FieldReport entries), as clients see it in extensions.cache.
    report = summary.get("cache") or ()
    cache = ",".join(f"{entry.path}:{entry.status.value}" for entry in report)
    text = f"{method} {path} {status} {duration}ms operation={summary.get('operation') or '-'} cache={cache or '-'}"

    def fields() -> dict[str, Any]:
        """The line's structured fields (JSON lines, and any handler but ours): built only when one needs them."""
        found = {"method": method, "path": path, "status": status, "duration_ms": duration,
                 **{k: v for k, v in summary.items() if k != "status"}}
        if "cache" in found:
            found["cache"] = [entry.as_json() for entry in report]
        return found

    handlers = _direct_handlers()
    if handlers is None:
        access_log.info(text, extra={"fields": fields()})
        return
    # What logging would write through these handlers, without a LogRecord, a filter or a Formatter call.
    now = time.time()
    rid = request_id.get()
    for handler, json_lines in handlers:
        if json_lines:
            line = _json_line(
                {"time": _seconds_text(now, _JSON_TIME), "level": "info", "logger": _ACCESS, "request_id": rid, "message": text,
                 **fields()}
            )
        else:
            line = f"{_seconds_text(now, _TEXT_TIME)},{int((now - int(now)) * 1000):03d} INFO [{rid}] {_ACCESS}: {text}"
        _write(handler, line, text, fields)


# --- the access line, written directly -----------------------------------------------------------------
# A LogRecord, the record factory, RequestIdFilter and Formatter.format cost more than the request they log
# (bench/profile_hit.py times log_request alone). When every handler the access line would reach is one
# logging_config() sets up (a plain StreamHandler with our filter and one of our two formats), the line is
# built here, byte for byte as the Formatter would, and written with the handler's lock. Any other handler
# (a file, a collector, pytest's capture) or a changed format, level or filter: the standard logging call.

_ACCESS = access_log.name
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
_TEXT_TIME = "%Y-%m-%d %H:%M:%S"  # logging.Formatter.default_time_format (",mmm" follows)
_JSON_TIME = "%Y-%m-%dT%H:%M:%S"
_seconds_texts: dict[str, tuple[int, str]] = {}


def _seconds_text(now: float, layout: str) -> str:
    """time.strftime(layout, time.localtime(now)), worked out once per second."""
    second = int(now)
    known = _seconds_texts.get(layout)
    if known is None or known[0] != second:
        known = _seconds_texts[layout] = (second, time.strftime(layout, time.localtime(second)))
    return known[1]


def _direct_handlers() -> list[tuple[logging.StreamHandler, bool]] | None:
    """The handlers the access line reaches, each with whether it writes JSON lines; None unless all are ours."""
    if access_log.filters or not access_log.isEnabledFor(logging.INFO):
        return None
    found: list[tuple[logging.StreamHandler, bool]] = []
    logger: logging.Logger | None = access_log
    while logger is not None:
        for handler in logger.handlers:
            if type(handler) is not logging.StreamHandler or handler.level > logging.INFO:
                return None
            if not all(type(f) is RequestIdFilter for f in handler.filters):
                return None
            formatter = handler.formatter
            if formatter is None or formatter.converter is not time.localtime:
                return None
            if type(formatter) is JsonFormatter:
                found.append((handler, True))
            elif (
                type(formatter) is logging.Formatter and type(formatter._style) is logging.PercentStyle
                and formatter._fmt == TEXT_FORMAT and formatter.datefmt is None
                and formatter.default_time_format == _TEXT_TIME and formatter.default_msec_format == "%s,%03d"
            ):
                found.append((handler, False))
            else:
                return None
        logger = logger.parent if logger.propagate else None
    # No handler at all: logging's last resort (warnings and above only) would not write it either.
    return found


# --- batched writes -------------------------------------------------------------------------------------
# One write (a system call, which also lets other threads take the GIL) per access line cost a busy server more
# than building the line: with the log on a file rather than /dev/null a hit took 15 µs more (146 µs; wrk on one
# `gql serve` worker); batched, a file costs no more than /dev/null (the line as a whole measured 13-35 µs over
# HTTP in noisy runs, 31 before). On the event loop, lines wait in `_pending` and go out in one write at the
# end of the loop's iteration (`call_soon`): under load the lines of every request that ended meanwhile, at
# rest at once. Any other record through one of our handlers (RequestIdFilter) writes the waiting lines first,
# so the order of lines stays the order of events; exit writes what is left.

_pending: dict[logging.StreamHandler, list[tuple[str, str, Callable[[], dict[str, Any]]]]] = {}
# The loop a flush is scheduled on (None: none is): a loop closed before running it does not stop the next one's.
_flush_on: asyncio.AbstractEventLoop | None = None


def _write(handler: logging.StreamHandler, line: str, text: str, fields: Callable[[], dict[str, Any]]) -> None:
    global _flush_on
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop (the CLI, a thread): written now
        _write_now(handler, [(line, text, fields)])
        return
    with handler.lock or contextlib.nullcontext():
        _pending.setdefault(handler, []).append((line, text, fields))
    if _flush_on is not loop:
        _flush_on = loop
        loop.call_soon(flush_access_lines)


def flush_access_lines() -> None:
    """Write the access lines waiting (called at the end of the loop's iteration, before other records, at exit)."""
    global _flush_on
    _flush_on = None
    for handler in list(_pending):
        _flush_handler(handler)


def _flush_handler(handler: logging.StreamHandler) -> None:
    with handler.lock or contextlib.nullcontext():
        waiting = _pending.pop(handler, None)
        if waiting:
            _write_now(handler, waiting)


def _write_now(handler: logging.StreamHandler, lines: list[tuple[str, str, Callable[[], dict[str, Any]]]]) -> None:
    handler.acquire()
    try:
        handler.stream.write("".join(line + handler.terminator for line, _, _ in lines))
        handler.flush()
    except Exception:  # noqa: BLE001  # as StreamHandler.emit: logging's own report of a failed write, never the request's failure
        for _, text, fields in lines:
            handler.handleError(access_log.makeRecord(_ACCESS, logging.INFO, "", 0, text, (), None, extra={"fields": fields()}))
    finally:
        handler.release()


atexit.register(flush_access_lines)  # after logging's own exit hook was registered: so it runs before it


def _json_line(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses (a lone surrogate, an integer over 64 bits): as the json module writes it
        return json.dumps(entry, ensure_ascii=False)


def install_record_factory() -> None:
    """Stamp every log record with the current request id, whoever logs it and however logging is set up."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_stamps_request_id", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id.get()
        return record

    factory._stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _pending:  # access lines still waiting for their write: before this record, in the order of events
            flush_access_lines()
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json_line(entry)


def logging_config(level: str, json_lines: bool = False) -> dict:
    """A dictConfig for our loggers and uvicorn's, with the request id in every line."""
    formatter = (
        {"()": JsonFormatter}
        if json_lines
        else {"format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"]}
    # watchfiles logs each batch of file changes at INFO ("1 change detected"), a second line for every
    # data reload, which gql.feed logs itself with what the change did; kept for debug.
    watch_level = level.upper() if level.lower() == "debug" else logging.getLevelName(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            **{
                name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
                for name in ("uvicorn", "uvicorn.error")
            },
            # gql.access logs one line per request with more in it (id, operation, cache statuses).
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
            "watchfiles": {"level": watch_level},
        },
    }


def configure(level: str, json_lines: bool = False) -> None:
    logging.config.dictConfig(logging_config(level, json_lines))
