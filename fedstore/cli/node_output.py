"""What a running node prints: ``KEY=value`` status lines for programs, sentences for people.

:class:`Output` writes to a stream (the node's stdout): in machine mode one
``KEY=value`` line per event or result, flushed at once (docs/NODE.md lists
the keys); in human mode a readable sentence per line. :class:`Capture`
collects the same lines in memory, bounded, for a command that
``fedstore ctl`` runs through the control socket; the client renders them
with an :class:`Output` of its own. Both are a :class:`Sink`, which is all a
command handler (:mod:`fedstore.cli.node_commands`) writes to.

Values may quote peers (topics, error texts), so control characters are
escaped (:func:`fedstore.console.clean`) and newlines become spaces.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING, Protocol

from fedstore.console import clean

if TYPE_CHECKING:
    from fedstore.node.events import NodeEvent

__all__ = ["Capture", "Output", "Sink", "human_line", "render"]

#: ``Capture`` keeps at most this many lines and characters of one command's output.
CAPTURE_LINES = 20_000
CAPTURE_CHARS = 8 << 20


class Sink(Protocol):
    """Where a command's output goes.

    Every line has both forms: ``KEY=value`` for programs and a sentence for
    people (*human*; by default :func:`human_line`; ``""`` shows people
    nothing). Prose without a key goes to :meth:`info`.
    """

    def event(self, key: str, value: object, human: str | None = None) -> None:
        """One result or event line."""

    def info(self, text: str) -> None:
        """Prose for people (hints, headings); programs never see it."""

    def progress_bar(self, label: str) -> AbstractContextManager[Callable[[int], None]]:
        """``with out.progress_bar("syncing") as progress: progress(bytes_so_far)``."""
        ...


def _short(peer: str) -> str:
    return f"…{peer[-8:]}" if len(peer) > 12 else peer


def _fields(value: str, n: int) -> list[str] | None:
    parts = value.split(":")
    return parts if len(parts) == n else None


def human_line(key: str, value: str, role: str = "") -> str | None:
    """The sentence for one status line (None: nothing to show people)."""
    f2 = _fields(value, 2)
    f3 = _fields(value, 3)
    match key:
        case "READY" | "RECEIVED" | "OK":
            return None
        case "PEER_ID":
            return f"Peer ID: {value}"
        case "LISTENING":
            return f"Bootstrap address: {value}" if role == "bootstrap" else f"Listening on {value}"
        case "RESUMED":
            return f"Resumed from local checkpoint round {value}"
        case "CONNECTED":
            return f"Connected to {value}"
        case "DISCONNECTED":
            return f"Disconnected from {value}"
        case "JOINED":
            return f"Joined topic {value}"
        case "LEFT":
            return f"Left topic {value}"
        case "SAVED" if f2:
            return f"Saved round {f2[0]} as {f2[1]}"
        case "ANNOUNCED" if f2:
            return f"Announced round {f2[0]}: {f2[1]}"
        case "SYNCED":
            return (
                "Nothing newer to sync"
                if value == "none"
                else (f"Synced to round {f2[0]}: {f2[1]}" if f2 else f"Synced to {value}")
            )
        case "HEARD" if f3:
            return f"Heard round {f3[0]} = {f3[1]} from {_short(f3[2])}"
        case "HEAD":
            if value == "none":
                return "No peer answered with a head"
            return f"Peer {_short(f3[2])} is at round {f3[0]}: {f3[1]}" if f3 else f"Head {value}"
        case "PUBLISHED":
            topic, _, rest = value.partition(":")
            size = rest.split(":", 1)[0]
            by_cid = " by CID" if rest.count(":") >= 2 else ""
            return f"Published {size} bytes on {topic}{by_cid}"
        case "DROPPED":
            return f"Dropped bad input {value}"
        case "ERROR":
            return f"Error: {value}"
        case "FAILED":
            return None
        case "LOADED":
            f4 = _fields(value, 4)
            if f4:
                return f"Loaded round {f4[0]} ({f4[1]}): {f4[2]} tensors, {int(f4[3]):,} parameters"
            return f"Loaded {value}"
        case "FETCHED":
            parts = value.split(":")
            stored = f", stored as round {parts[2]}" if len(parts) > 2 else ""
            size = f"{int(parts[1]):,}" if len(parts) > 1 and parts[1].isdigit() else "?"
            return f"Fetched and verified {parts[0]} ({size} bytes){stored}"
        case "PRUNED":
            return "Nothing to prune" if value == "none" else f"Pruned rounds {value}"
        case "ROUNDS":
            return "No local rounds" if value == "none" else f"Local rounds: {value}"
        case "CID" if f3:
            return f"  round {f3[0]:>6}  {f3[1]}  {'local' if f3[2] == 'local' else _short(f3[2])}"
        case "PEERS":
            return f"{value} peer(s)"
        case "ADVERTIZED":
            return "Nothing to advertize: no local checkpoint"
        case "EXIT":
            return f"Stopped ({value} failed command(s))."
    return f"{key.title().replace('_', ' ')}: {value}"


class Output:
    """A :class:`Sink` printing to *stream* (default: the current ``sys.stdout``)."""

    def __init__(self, machine: bool, stream: IO[str] | None = None, role: str = "") -> None:
        self._machine = machine
        self._stream = stream
        self._role = role

    @property
    def machine(self) -> bool:
        return self._machine

    def node_event(self, event: NodeEvent) -> None:
        """Print a node event (the node's ``on_event`` callback)."""
        from fedstore.node.status import status_line

        self.event(*status_line(event))

    def event(self, key: str, value: object, human: str | None = None) -> None:
        """Print one ``KEY=value`` line (machine) or its sentence (human)."""
        text = clean(str(value).replace("\n", " "))  # values may quote peers: no escapes
        if self._machine:
            self._write(f"{key}={text}")
            if key == "RESUMED":
                print(f"Resumed from local checkpoint round {text}", file=sys.stderr, flush=True)
            return
        line = human_line(key, text, self._role) if human is None else clean(human)
        if line:
            self._write(line)

    def message(self, topic: str, sender: str, data: bytes) -> None:
        """A message a peer published (human mode only: machines get ``RECEIVED=``)."""
        if self._machine:
            return
        try:
            text = data.decode("utf-8")
            shown = text if text.isprintable() and len(text) <= 500 else f"<{len(data)} bytes>"
        except UnicodeDecodeError:
            shown = f"<{len(data)} bytes>"
        self._write(f"[{clean(topic)}] {sender[-8:]}: {shown}")

    def info(self, text: str) -> None:
        """Human-only prose (tables, help); silent in machine mode."""
        if not self._machine:
            self._write(clean(text))

    def progress_bar(self, label: str) -> AbstractContextManager[Callable[[int], None]]:
        """A transfer's progress on the terminal (people, large transfers only)."""
        from fedstore.cli.progress import byte_progress

        return byte_progress(label, enabled=None if not self._machine else False)

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stdout  # looked up now: the prompt may have patched it
        stream.write(line + "\n")
        stream.flush()


class Capture:
    """A :class:`Sink` keeping a command's lines in memory (bounded) for ``fedstore ctl``.

    ``lines`` holds ``(KEY, value, human)`` triples (*human* None: the
    default sentence) and ``("", "", text)`` for prose. Beyond
    :data:`CAPTURE_LINES` lines or :data:`CAPTURE_CHARS` characters the rest
    is dropped and ``truncated`` is set.
    """

    def __init__(self, on_progress: Callable[[str, int], None] | None = None) -> None:
        self.lines: list[tuple[str, str, str | None]] = []
        self._on_progress = on_progress
        self.truncated = False
        #: set when the command has finished: events after that are not its own
        self.closed = False
        self._chars = 0

    def _add(self, key: str, value: str, human: str | None) -> None:
        size = len(key) + len(value) + len(human or "") + 2
        if len(self.lines) >= CAPTURE_LINES or self._chars + size > CAPTURE_CHARS:
            self.truncated = True
            return
        self._chars += size
        self.lines.append((key, value, human))

    def event(self, key: str, value: object, human: str | None = None) -> None:
        shown = None if human is None else clean(human)
        self._add(key, clean(str(value).replace("\n", " ")), shown)

    def info(self, text: str) -> None:
        self._add("", "", clean(text))

    @contextlib.contextmanager
    def progress_bar(self, label: str) -> Iterator[Callable[[int], None]]:
        """Progress goes to *on_progress* (the ctl client's bar), at most 5 updates a second."""
        last = [0.0]

        def progress(done: int) -> None:
            now = time.monotonic()
            if self._on_progress is not None and not self.closed and now - last[0] >= 0.2:
                last[0] = now
                self._on_progress(label, done)

        yield progress

    def node_event(self, event: NodeEvent) -> None:
        from fedstore.node.status import status_line

        self.event(*status_line(event))


def render(lines: list[tuple[str, str, str | None]], out: Output) -> None:
    """Print captured ``(KEY, value, human)`` lines through *out*, as the node would have."""
    for key, value, human in lines:
        if key:
            out.event(key, value, human)
        else:
            out.info(human or "")
