"""Structured JSON logging: one object per line; request lines carry id, model, status, latency.

`setup_logging` (the CLI) sends every logger to stderr as JSON lines. The per-request line, the
hot path's only log output, skips the `LogRecord` machinery when that setup is in place: it is
rendered in one `orjson.dumps`, in the same shape the formatter gives, and the lines of requests
that end in the same event-loop turn are written together, in one `os.write`, at the end of that
turn. Elsewhere (tests, embedding) the request line is a normal log record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

REQUEST_LOGGER = "relais_gateway.request"


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class RequestLog:
    """The per-request log line: at INFO on `relais_gateway.request`."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(REQUEST_LOGGER)
        self.fd: int | None = None
        """Where `setup_logging` sends JSON lines; None: go through `logging`."""
        self._pending: list[bytes] = []

    def emit(self, fields: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if self.fd is None:
            self.logger.info("request", extra=fields)
            return
        entry = {"ts": _timestamp(time.time()), "level": "info", "logger": REQUEST_LOGGER}
        entry["msg"] = "request"
        entry.update(fields)
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(orjson.dumps(entry, default=str) + b"\n")

    def flush(self) -> None:
        """Write the lines held since the last flush."""
        data = b"".join(self._pending)
        self._pending.clear()
        while data and self.fd is not None:
            data = data[os.write(self.fd, data) :]


request_log = RequestLog()


def _without_query(record: logging.LogRecord) -> bool:
    """uvicorn's access line without the query string: a key sent as `?key=...` by a careless
    client must not land in the logs (the gateway's own request line logs the path alone)."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
        record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
    return True


def setup_logging(level: str) -> None:
    """Send every logger (uvicorn's too) to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").addFilter(_without_query)
    sys.stderr.flush()
    request_log.fd = sys.stderr.fileno()
