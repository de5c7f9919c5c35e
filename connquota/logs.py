"""Structured logs for every connquota process: one JSON object per line, with the fields a
log call passes in `extra` (quota, pool, pod, connection) and fixed fields on every line.

Secrets never reach a formatter: credentials are read from files into objects whose repr
hides them and are never passed to a log call.
"""

from __future__ import annotations

import json
import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """`{"ts":..,"level":..,"logger":..,"msg":..,<extra fields>}`."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            # Plain fields only (quota, pool, pod, connection, ...): objects that libraries
            # attach to records (kopf's settings, its object references) are not log content.
            if key not in _STANDARD and not key.startswith("_") and _plain(value):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def _plain(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class ContextFilter(logging.Filter):
    """Adds fixed fields (quota, pod) to every record that lacks them."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def setup_logging(level: str, fmt: str, fields: dict[str, str], text_tag: str = "pod") -> None:
    """Log to stderr as JSON (`fmt='json'`) or text, with `fields` on every line (in text, the
    `text_tag` field in brackets)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [%({text_tag})s] %(message)s")
        )
    handler.addFilter(ContextFilter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
