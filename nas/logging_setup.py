"""Log output of ``nas serve`` and its dispatcher: one JSON object per line for collectors, or plain text for people.

The API adds the request being served to every record (:func:`api.request_context.install_log_record_factory`);
the formatters here print those fields when a record has them.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from nas.safe_text import escape_controls

LogFormat = Literal["auto", "json", "text"]
_CONTEXT_FIELDS = ("request_id", "owner")


class TextFormatter(logging.Formatter):
    """The classic line, with the request id and owner appended when a request is being served.

    Control characters in the message and the fields are escaped (``\\n``, ``\\x1b``): a newline
    decoded from a request path must not forge a log line, nor an escape sequence drive the
    terminal that reads the log. A traceback keeps its lines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord({**record.__dict__, "msg": escape_controls(record.getMessage()), "args": None})
        line = super().format(safe)
        context = " ".join(
            f"{k}={escape_controls(str(record.__dict__[k]))}" for k in _CONTEXT_FIELDS if k in record.__dict__
        )
        return f"{line} [{context}]" if context else line


def json_formatter() -> logging.Formatter:
    """Keys: ``timestamp``, ``level``, ``logger``, ``message``, then any extras of the record
    (``request_id``, ``owner``, and on access lines ``method``, ``path``, ``status``, ``duration_ms``)."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def configure_logging(log_format: LogFormat = "auto", level: int = logging.INFO) -> None:
    """Send every logger's records to stderr; ``auto`` is text on a terminal and JSON otherwise."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
