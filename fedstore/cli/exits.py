"""How a ``fedstore`` command ends when it raises: one line and an exit status.

:func:`exit_status` is the command line's single exception policy, used by
:func:`fedstore.cli.main` for every command, the long-running ones (``node``,
``demo``) included:

* a :class:`~fedstore.errors.FedstoreError` or an :class:`OSError` (a file
  the user named, a full disk) prints ``fedstore: error: <message>`` and
  exits 1;
* Ctrl-C (:class:`KeyboardInterrupt`) prints ``fedstore: interrupted`` and
  exits 130 (128 + SIGINT, what a shell reports for a process that SIGINT
  stopped);
* a closed pipe on stdout (``fedstore catalog sql ... | head -1``) exits
  141 (128 + SIGPIPE) without a word: stdout is pointed at ``/dev/null``
  first, the recipe of the Python documentation, so the interpreter's
  final flush cannot fail a second time;
* anything else is a bug and stays a real crash report (the caller
  re-raises it).

Exception groups (trio nurseries wrap what their tasks raise, however
deeply they nest) are judged by their leaves, trio's ``Cancelled`` aside
(cancellation is how the other tasks stop, not a cause): when every leaf is
one of the expected errors above, the first one (the root cause the user
should read) is printed as one line; one unexpected leaf keeps the whole
group a crash report, except under Ctrl-C or a closed pipe, where the
other leaves are consequences and are logged at DEBUG only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from fedstore.console import clean
from fedstore.errors import FedstoreError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "error_line",
    "exit_status",
    "leaves",
]

log = logging.getLogger("fedstore.cli")

EXIT_ERROR = 1
#: 128 + SIGINT
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE
EXIT_BROKEN_PIPE = 141

#: Deepest exception-group nesting looked into (a guard, never reached in practice).
_MAX_DEPTH = 64


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside *exc*, exception groups flattened depth-first."""
    out: list[BaseException] = []

    def walk(e: BaseException, depth: int) -> None:
        if isinstance(e, BaseExceptionGroup) and depth < _MAX_DEPTH:
            for sub in e.exceptions:
                walk(sub, depth + 1)
        else:
            out.append(e)

    walk(exc, 0)
    return out


def _is_cancellation(exc: BaseException) -> bool:
    trio = sys.modules.get("trio")  # never imported here: without trio there is no Cancelled
    return trio is not None and isinstance(exc, trio.Cancelled)


def error_line(exc: BaseException) -> str:
    """The one-line message for an expected error (control characters escaped)."""
    if isinstance(exc, FedstoreError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return clean(" ".join(text.split()) or type(exc).__name__)


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr is closed too: nothing more to tell
        pass


def _gone(stream: TextIO) -> bool:
    """Whether *stream*'s reader has gone (a pipe or socket closed at the other end).

    A stream without a file descriptor (replaced in-process) has not gone.
    Without ``poll`` (Windows) there is no telling: yes, since the caller
    only asks after a :class:`BrokenPipeError`.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    import select

    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return True
    bad = select.POLLERR | select.POLLHUP | select.POLLNVAL
    return any(mask & bad for _fd, mask in events)


def _silence(stream: TextIO) -> None:
    """Point *stream*'s file descriptor at /dev/null, so later writes and flushes succeed."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _log_others(what: str, others: list[BaseException]) -> None:
    for e in others:
        log.debug("%s; also raised:", what, exc_info=(type(e), e, e.__traceback__))


def exit_status(exc: BaseException) -> int | None:
    """Report *exc* the way the command line does and return the exit status.

    Returns None for what must propagate unchanged: :class:`SystemExit`
    (argparse's usage errors, an explicit exit) and crashes (the caller
    re-raises, so Python prints the traceback). A group holding only
    ``SystemExit`` (``sys.exit()`` called inside a task) exits with its code.
    """
    if isinstance(exc, SystemExit):
        return None
    found = [e for e in leaves(exc) if not _is_cancellation(e)]
    if not found:
        return None
    exits = [e for e in found if isinstance(e, SystemExit)]
    if len(exits) == len(found):  # sys.exit() inside a task group
        code = exits[0].code
        if code is None or isinstance(code, int):
            return code or 0
        _say(clean(str(code)))
        return EXIT_ERROR
    if exits:
        return None
    if any(isinstance(e, KeyboardInterrupt) for e in found):
        _log_others("interrupted", [e for e in found if not isinstance(e, KeyboardInterrupt)])
        _say("fedstore: interrupted")
        return EXIT_INTERRUPTED
    pipes = [e for e in found if isinstance(e, BrokenPipeError)]
    if pipes:
        closed = [s for s in (sys.stdout, sys.stderr) if s is not None and _gone(s)]
        if closed:
            for stream in closed:
                _silence(stream)
            _log_others("output pipe closed", [e for e in found if e not in pipes])
            return EXIT_BROKEN_PIPE
    expected = [e for e in found if isinstance(e, FedstoreError | OSError)]
    if len(expected) != len(found):
        return None
    more = len({error_line(e) for e in expected}) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    _say(f"fedstore: error: {error_line(expected[0])}{suffix}")
    return EXIT_ERROR
