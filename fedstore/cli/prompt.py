"""The ``Command>`` prompt on a terminal: prompt_toolkit with history, completion, patched stdout.

* line editing and persistent history (``<data dir>/prompt_history``, mode
  0600; Up/Down and Ctrl-R search it);
* Tab completes command names and their arguments by kind: joined topics,
  local rounds, known CIDs, peers' addresses, file names
  (:func:`fedstore.cli.node_commands.arg_kinds`);
* what the node prints while you type (events, messages, logs) appears above
  the input line, which stays intact (``patch_stdout``);
* Ctrl-C clears the line (while a command runs it cancels the command);
  Ctrl-D on an empty line stops the node.

prompt_toolkit runs its own asyncio loop; :class:`PromptReader.read` runs it
in a worker thread (the node keeps serving on trio meanwhile), and
:meth:`PromptReader.interrupt` ends a pending read from the trio side so the
terminal is restored before the process exits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.cli.node_commands import COMMANDS, Session, arg_kinds, split_line

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completion
    from prompt_toolkit.document import Document

__all__ = ["HISTORY_NAME", "Completions", "PromptReader", "completions_for"]

HISTORY_NAME = "prompt_history"
PROMPT = "Command> "
#: Topics offered even before they are joined.
_KNOWN_TOPICS = ("fed-learn", "model-cids")


@dataclass(frozen=True)
class Completions:
    """What argument completion offers, refreshed by the node before each prompt."""

    topics: tuple[str, ...] = _KNOWN_TOPICS
    rounds: tuple[str, ...] = ()
    cids: tuple[str, ...] = ()
    multiaddrs: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def values(self, kind: str) -> tuple[str, ...]:
        return {
            "topic": self.topics,
            "round": self.rounds,
            "cid": self.cids,
            "multiaddr": self.multiaddrs,
        }.get(kind, self.extra.get(kind, ()))


async def completions_for(session: Session) -> Completions:
    """A snapshot of the node's topics, rounds, CIDs and peer addresses (catalog reads)."""
    node = session.node
    topics = sorted({*node.joined_topics(), *_KNOWN_TOPICS})
    rounds = [str(r) for r in await node.store.list_rounds()]
    cids = [r.cid for r in await node.store.list_checkpoints()]
    cids += [a.cid for a in await node.catalog.announcements(limit=100)]
    addrs = [
        a if "/p2p/" in a else f"{a}/p2p/{p}" for p in node.peers() for a in node.host.peer_addrs(p)
    ]
    return Completions(
        topics=tuple(topics),
        rounds=tuple(reversed(rounds)),
        cids=tuple(dict.fromkeys(cids)),
        multiaddrs=tuple(dict.fromkeys(addrs)),
    )


def _completer_class() -> type[Any]:
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    class NodeCompleter(Completer):
        """Command names first, then each argument by its kind."""

        def __init__(self, reader: PromptReader) -> None:
            self._reader = reader
            self._paths = PathCompleter(expanduser=True)

        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterator[Completion]:
            text = document.text_before_cursor
            try:
                words = split_line(text)
            except ValueError:
                return
            typing_a_word = bool(text) and not text[-1].isspace()
            current = words.pop() if typing_a_word and words else ""
            if not words:
                yield from _matching(current, COMMANDS)
                return
            cmd = COMMANDS.get(words[0].lower())
            if cmd is None:
                return
            kinds = arg_kinds(cmd)
            position = len(words) - 1
            if position >= len(kinds):
                return
            kind = kinds[position]
            if kind == "path":
                sub = Document(current, len(current))
                yield from self._paths.get_completions(sub, complete_event)
                return
            yield from _matching(current, self._reader.completions.values(kind))

    def _matching(prefix: str, options: Iterable[str]) -> Iterator[Completion]:
        for option in options:
            if option.startswith(prefix):
                yield Completion(option, start_position=-len(prefix))

    return NodeCompleter


def _history_file(path: Path) -> Path:
    """The history file, created with mode 0600 (commands may name files and peers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    return path


class PromptReader:
    """Reads command lines on the terminal with prompt_toolkit (see the module docstring)."""

    def __init__(self, history: Path | None) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        hist = FileHistory(str(_history_file(history))) if history else InMemoryHistory()
        self.completions = Completions()
        self._session: Any = PromptSession(
            history=hist,
            completer=_completer_class()(self),
            complete_while_typing=False,
            enable_history_search=True,
        )
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False

    def read(self) -> str | None:
        """The next line (blocking; run it in a worker thread); None at Ctrl-D or when closed.

        Ctrl-C clears the line and prompts again.
        """
        self._idle.clear()
        try:
            while not self._closing:
                try:
                    return str(self._session.prompt(PROMPT, handle_sigint=False))
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return None
            return None
        finally:
            self._idle.set()

    def interrupt(self) -> None:
        """End a pending :meth:`read` (from any thread): it returns None."""
        self._closing = True
        app = self._session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no :meth:`read` runs (the terminal is restored)."""
        return self._idle.wait(timeout)
