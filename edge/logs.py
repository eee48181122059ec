"""Journald-friendly logging.

Under systemd (JOURNAL_STREAM names our stderr) each line is ``<N>level message``
with the syslog priority prefix journald understands and no timestamp (journald
adds its own). Elsewhere lines are ``HH:MM:SS level message``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        dev, ino = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno, 6)
        text = f"<{prio}>{record.levelname.lower()} {record.getMessage()}"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower():7} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(level: str = "info", journal: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_journal = under_journald() if journal is None else journal
    handler.setFormatter(JournalFormatter() if use_journal else PlainFormatter())
    root = logging.getLogger("edgewire.edge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
