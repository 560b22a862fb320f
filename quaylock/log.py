"""Structured logs: one JSON object a line, one line per request.

Messages are short static phrases; values go in fields. Nothing that can
carry a secret is logged: no query strings, no Authorization or Cookie
headers, no raw URIs (the route template stands in for the path). The
`redact` step below is the last guard for fields a caller adds.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_SECRET_KEYS = ("authorization", "cookie", "password", "secret", "token", "query")

logger = logging.getLogger("quaylock")
access = logging.getLogger("quaylock.access")


def redact(fields: dict) -> dict:
    return {
        key: "[redacted]" if any(s in key.lower() for s in _SECRET_KEYS) else value
        for key, value in fields.items()
    }


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(redact(fields))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _plain(value: object) -> str:
    """A field value on one line: control characters escaped, so that a
    path a client chose cannot start a forged log line."""
    text = str(value)
    if text.isprintable():
        return text
    return repr(text)[1:-1]


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={_plain(v)}" for k, v in redact(fields).items())
        line = (
            f"{record.levelname.lower():5} {record.name}: {record.getMessage()} {extra}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("quaylock")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(log: logging.Logger, level: int, message: str, **fields) -> None:
    if log.isEnabledFor(level):
        log.log(level, message, extra={"fields": fields})
