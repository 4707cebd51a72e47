"""Logging setup: Rich on a terminal, plain or JSON lines otherwise; py-libp2p routed in.

:func:`setup_logging` configures the ``fedstore`` logger of a command-line
process. py-libp2p configures its own ``libp2p`` logger *when it is
imported* (``libp2p.utils.logging.setup_logging``: level WARNING, no
handlers, no propagation, unless ``LIBP2P_DEBUG`` is set), so its records
would bypass fedstore's handlers and Python's last-resort handler would print
them as bare text. :func:`route_libp2p_logs` undoes that; it must run after
``import libp2p``, so :func:`fedstore.p2p.host.open_host` calls it (and
:func:`setup_logging` calls it too when py-libp2p is already loaded).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time

__all__ = ["route_libp2p_logs", "setup_logging"]

#: py-libp2p's root logger.
LIBP2P_LOGGER = "libp2p"
#: Set by :func:`setup_logging`: only then does fedstore own the process's log output.
_configured = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "WARNING", *, json_lines: bool = False) -> None:
    """Configure the ``fedstore`` logger once for a command-line process."""
    root = logging.getLogger("fedstore")
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if json_lines:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False
    global _configured
    _configured = True
    if LIBP2P_LOGGER in sys.modules:
        route_libp2p_logs()


class _ToFedstore(logging.Handler):
    """Hands py-libp2p's records to the ``fedstore`` logger's handlers, one line each.

    py-libp2p writes some messages over several lines (stream errors with
    details); they are joined with `` | `` so every record stays one line in
    plain and JSON logs. The record keeps its own logger name (``libp2p....``).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if "\n" in message:
                record = copy.copy(record)
                record.msg = " | ".join(p.strip() for p in message.splitlines() if p.strip())
                record.args = None
            logging.getLogger("fedstore").handle(record)
        except Exception:
            self.handleError(record)


def route_libp2p_logs() -> None:
    """Show py-libp2p's log records through fedstore's handlers, at fedstore's level.

    At ``INFO`` or ``DEBUG`` py-libp2p's records at that level and above are
    shown; at ``WARNING`` and above only its ``CRITICAL`` ones: py-libp2p
    logs routine events (a peer leaving while a stream opens) as errors, and
    fedstore reports the failures that matter itself. Idempotent. Does nothing
    when ``LIBP2P_DEBUG`` is set (py-libp2p's own logging then applies, as
    its documentation says) or when :func:`setup_logging` has not run (an
    application embedding fedstore keeps its own logging configuration).
    Call it after ``import libp2p``, which resets the ``libp2p`` logger.
    """
    if not _configured or os.environ.get("LIBP2P_DEBUG"):
        return
    level = logging.getLogger("fedstore").getEffectiveLevel()
    lib = logging.getLogger(LIBP2P_LOGGER)
    for handler in list(lib.handlers):
        if isinstance(handler, _ToFedstore):
            lib.removeHandler(handler)
    threshold = level if level <= logging.INFO else logging.CRITICAL
    lib.setLevel(threshold)
    lib.propagate = False
    # the handler filters too: a py-libp2p module may set a lower level on its own
    # logger (auto_connector says INFO), and propagation ignores the parent's level
    handler = _ToFedstore()
    handler.setLevel(threshold)
    lib.addHandler(handler)
