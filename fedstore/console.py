"""Console output shared by the CLI commands and the demos: tables that stay whole when piped."""

from __future__ import annotations

import os
import sys

from rich.console import Console

__all__ = ["table_console"]

#: Width used when stdout is not a terminal (a pipe, a file, a CI log): wide
#: enough that a table of full CIDs is never squeezed into ellipses.
PIPE_WIDTH = 200


def table_console(*, stderr: bool = False) -> Console:
    """A Rich console for tables.

    On a terminal it uses the terminal's width; otherwise (``COLUMNS`` unset)
    a wide fixed width, so piped output keeps every column whole.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = PIPE_WIDTH
    return Console(highlight=False, width=width, stderr=stderr)
