"""A trial's log: what its code logged and warned on the worker, and its traceback when it failed.

The worker captures it (:class:`Capture`) and sends the lines gathered since its last message with
each report, and the rest with its failure (appended to the exception as a note after
:data:`MARKER`, which :func:`split_failure` finds in the traceback text the runner receives). The
runner keeps the tail per trial and the store keeps it with the trial. Every holder keeps at most
:data:`LOG_TAIL_BYTES`: a chatty trial costs a bounded amount of memory and database space.
"""

from __future__ import annotations

import logging
import re
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

LOG_TAIL_BYTES = 64 * 1024
"""The most of a trial's log kept anywhere (UTF-8 bytes of its end); the start of a longer one is dropped."""

MARKER = "--- nas trial log ---"
"""Separates a failed trial's traceback from the log lines its exception carries."""

_DROPPED = "[... earlier lines dropped: the log keeps its last {} KiB]\n"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the traceback text it hands back


def tail(text: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of ``text`` within ``limit`` UTF-8 bytes, from a line start, saying that lines were dropped."""
    data = text.encode()
    if len(data) <= limit:
        return text
    dropped = _DROPPED.format(limit // 1024)
    kept = data[len(data) - limit + len(dropped.encode()) :].decode(errors="ignore")
    newline = kept.find("\n")
    kept = kept[newline + 1 :] if 0 <= newline < len(kept) - 1 else kept
    return dropped + kept


class LogTail:
    """Text appended piece by piece, of which the last :data:`LOG_TAIL_BYTES` are kept."""

    def __init__(self) -> None:
        self._text = ""

    def append(self, text: str) -> None:
        if text:
            self._text = tail(self._text + text)

    def take(self) -> str:
        """The text gathered so far, which is then forgotten."""
        text, self._text = self._text, ""
        return text

    @property
    def text(self) -> str:
        return self._text


class Capture(logging.Handler):
    """Gathers the log records (INFO and above, Ray's own excepted) and warnings of the code that
    runs while it is installed; :meth:`take` hands over what came since the last call."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._pending = LogTail()  # self.lock (the handler's) guards it: any thread may log

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("ray")  # the worker's machinery, not the trial's code

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - a bad record must not fail the trial
            self.handleError(record)

    def warning(
        self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
        file: TextIO | None = None, line: str | None = None,
    ) -> None:  # fmt: skip
        """Stands in for :func:`warnings.showwarning` while installed."""
        with self.lock:
            self._pending.append("WARNING " + warnings.formatwarning(message, category, filename, lineno, line))

    def take(self) -> str:
        with self.lock:
            return self._pending.take()

    def failed(self, exc: BaseException) -> None:
        """Append the traceback and the lines not yet sent to ``exc``, for the runner to find."""
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        with self.lock:
            self._pending.append(trace)
        exc.add_note(f"{MARKER}\n{self.take()}")


@contextmanager
def capture() -> Iterator[Capture]:
    """Install a :class:`Capture` on the root logger (lowered to INFO meanwhile) and for warnings;
    an exception leaving the block carries its traceback and the unsent lines (:meth:`Capture.failed`)."""
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, as Python shows them
            warnings.showwarning = handler.warning
            try:
                yield handler
            except Exception as exc:
                handler.failed(exc)
                raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def split_failure(error_text: str) -> tuple[str, str]:
    """``(traceback, log)`` from the text of a failed trial's error: the log its exception carried
    after :data:`MARKER` (which ends with the worker's own traceback), or, without one (a worker that
    died), the whole text as the log."""
    text = _ANSI.sub("", error_text)
    before, marker, log = text.partition(MARKER)
    return before.rstrip(), (log.strip("\n") + "\n" if marker else text.strip() + "\n")
