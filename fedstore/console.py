"""Console output shared by the CLI commands and the demos: tables that stay readable
when piped, and text from peers that cannot drive the terminal.

Checkpoint metadata, tensor names, announcements and backend error texts come
from other machines. Every human-readable renderer passes such text through
:func:`clean` (plain lines) or :func:`cell` (Rich tables and lines): control
characters (ESC, OSC, BEL, backspace, carriage return, C1 codes, bidi
overrides...) are shown as ``\\x1b``-style escapes instead of reaching the
terminal, and Rich markup (``[link=...]``) in them is shown, not interpreted.
JSON and CSV output keep values exact: their encoders escape what they must.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "PIPE_WIDTH",
    "cell",
    "clean",
    "console",
    "metric_text",
    "short_id",
    "size_text",
    "table_console",
]

#: Width used when stdout is not a terminal (a pipe, a file, a CI log): wide
#: enough that a table of full CIDs is never squeezed into ellipses.
PIPE_WIDTH = 200


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class _Console(Console):
        """A Rich console that leaves a closed pipe to :mod:`fedstore.cli.exits`.

        Rich's own reaction (``SystemExit(1)``) would bypass the command line's
        exit policy; the error is raised again instead.
        """

        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console


def console(**kwargs: Any) -> Console:
    """``rich.console.Console(**kwargs)``, except that a closed pipe raises
    :class:`BrokenPipeError` for :mod:`fedstore.cli.exits` to handle."""
    return _console_class()(**kwargs)


def table_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A Rich console for tables.

    On a terminal it uses the terminal's width; otherwise (``COLUMNS`` unset)
    a wide fixed width (at least *width* when given), so piped output keeps
    every column whole. A closed pipe raises :class:`BrokenPipeError`.
    """
    stream = sys.stderr if stderr else sys.stdout
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = max(width or 0, PIPE_WIDTH)
    return _console_class()(highlight=False, width=width, stderr=stderr)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(value: object, *, limit: int | None = None) -> str:
    """``str(value)`` safe to print on a terminal.

    Every character that is not printable (``str.isprintable``: control and
    format characters, line and paragraph separators, unassigned code
    points) becomes a visible escape such as ``\\x1b`` or ``\\u202e``; a
    plain space stays. With *limit*, text longer than that many characters
    is cut and says how much was left out.
    """
    text = str(value)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}… (+{len(text) - limit} chars)"
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def cell(value: object, *, limit: int | None = None, style: str = "") -> Text:
    """:func:`clean` text as a Rich ``Text``: printed literally, markup and emoji codes
    included, in a table cell or with ``console.print``."""
    from rich.text import Text

    return Text(clean(value, limit=limit), style=style)


# -- figures in progress lines and live views (fedstore aggregate/train/simulate) ----------


def size_text(n: float) -> str:
    """``n`` bytes for people: ``812 B``, ``12.3 KiB``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def metric_text(value: float) -> str:
    """A metric for people: 4 decimals, or 4 significant digits when large or tiny."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4f}"
    return f"{value:.4g}"


def short_id(text: str, keep: int = 8) -> str:
    """A CID or peer id shortened for a line: ``head…tail``."""
    return text if len(text) <= 2 * keep + 3 else f"{text[:keep]}…{text[-keep:]}"
