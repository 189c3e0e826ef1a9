"""Logging: every line carries the id of the request it belongs to."""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import logging.config
import os
import re

# "-" outside a request (startup, background work).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def logging_config(level: str, json_lines: bool = False) -> dict:
    """A dictConfig for our loggers and uvicorn's, with the request id in every line."""
    formatter = (
        {"()": JsonFormatter}
        if json_lines
        else {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(level: str, json_lines: bool = False) -> None:
    logging.config.dictConfig(logging_config(level, json_lines))
