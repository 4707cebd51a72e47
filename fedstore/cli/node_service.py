"""Running a node for the command line: ``fedstore node`` and ``fedstore daemon`` share this.

:func:`run_node` starts the node, serves its control socket
(:mod:`fedstore.cli.control`), prints ``READY=<peer id>`` once both accept
work, feeds it commands from one :class:`Source`, and stops cleanly when
asked: ``exit`` (typed, scripted or through ``fedstore ctl``), end of a
``--script``, Ctrl-D at the prompt, or one of *stop_signals*. Then it prints
``EXIT=<failed commands>`` and returns 0: the catalog is closed, the
identity kept, the socket removed.

Sources: :class:`ScriptSource` (``--script FILE``: its commands, then stop),
:class:`StdinSource` (stdin is a pipe or file: its commands; at end of
input the node keeps running, as a service would), :class:`PromptSource`
(a terminal: :mod:`fedstore.cli.prompt`), and none (``fedstore daemon``).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, TypeVar

from fedstore.cli.node_commands import EventRouter, Session
from fedstore.cli.node_output import Output

if TYPE_CHECKING:
    import trio

    from fedstore.config import NodeConfig

__all__ = [
    "PromptSource",
    "ScriptSource",
    "Source",
    "StdinSource",
    "exit_cleanly_on",
    "run_node",
    "stopped",
    "until_stopped",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

KEEPS_RUNNING = "end of input: the node keeps running until SIGTERM, SIGINT or 'fedstore ctl exit'"


class Source(Protocol):
    """Feeds command lines to a session until it runs out (then returns)."""

    async def feed(self, session: Session, out: Output) -> None: ...


class ScriptSource:
    """The lines of a file, then ``exit``."""

    def __init__(self, lines: IO[str]) -> None:
        self._lines = lines

    async def feed(self, session: Session, out: Output) -> None:
        import trio

        while True:
            line = await trio.to_thread.run_sync(self._lines.readline)
            if not line:
                break
            await session.execute(line, out)
            if session.stop_requested.is_set():
                return
        session.stop_requested.set()


class StdinSource:
    """Lines of a stream read in a worker thread; at its end the node keeps running."""

    def __init__(self, stream: IO[str], *, echo_prompt: bool = False) -> None:
        self._stream = stream
        self._echo = echo_prompt

    async def feed(self, session: Session, out: Output) -> None:
        import trio

        while not session.stop_requested.is_set():
            if self._echo:
                sys.stdout.write("Command> ")
                sys.stdout.flush()
            line = await trio.to_thread.run_sync(self._stream.readline, abandon_on_cancel=True)
            if not line:
                print(f"fedstore node: {KEEPS_RUNNING}", file=sys.stderr, flush=True)
                return
            await session.execute(line, out)


class PromptSource:
    """The prompt_toolkit prompt (:mod:`fedstore.cli.prompt`) on a terminal."""

    def __init__(self, history: Path | None) -> None:
        self._history = history

    async def feed(self, session: Session, out: Output) -> None:
        import trio
        from prompt_toolkit.patch_stdout import patch_stdout

        from fedstore.cli.prompt import PromptReader, completions_for

        reader = PromptReader(self._history)
        running: list[trio.CancelScope] = []

        async def on_ctrl_c(signals: AsyncIterator[int]) -> None:
            async for _ in signals:  # the terminal is cooked while a command runs
                if running:
                    running[0].cancel()
                else:  # a SIGINT from elsewhere while the prompt waits
                    session.stop_requested.set()

        with patch_stdout(raw=True), trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(on_ctrl_c, signals)
                try:
                    while not session.stop_requested.is_set():
                        reader.completions = await completions_for(session)
                        line = await trio.to_thread.run_sync(reader.read, abandon_on_cancel=True)
                        if line is None:  # Ctrl-D
                            session.stop_requested.set()
                            break
                        with trio.CancelScope() as scope:
                            running.append(scope)
                            await session.execute(line, out)
                        running.clear()
                        if scope.cancelled_caught:
                            out.info("interrupted")
                finally:
                    reader.interrupt()  # restore the terminal before anything else prints
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(reader.wait_idle)
                    nursery.cancel_scope.cancel()


_early_stop: list[int] = []


def _exit_now(signum: int, frame: object) -> None:
    import trio.lowlevel

    if trio.lowlevel.in_trio_run():  # the node starts or stops: let run_node see it
        _early_stop.append(signum)
        return
    raise SystemExit(0)


def exit_cleanly_on(signals: Sequence[int]) -> None:
    """Until the running node takes *signals* over, make them end the process with
    status 0 instead of the default kill: a SIGTERM that arrives while the node
    starts is still a clean stop (before trio runs it exits at once; inside
    trio's loop, before :func:`run_node` listens for it, it is remembered and
    acted on). See :func:`stopped` for after."""
    _early_stop.clear()
    for signum in signals:
        signal.signal(signum, _exit_now)


def stopped(signals: Sequence[int]) -> None:
    """The node has stopped and the process is ending: ignore *signals* from now on.

    A SIGTERM arriving while the interpreter finalizes (Python resets its own
    handlers then) would otherwise turn a clean stop into a kill by signal.
    """
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)


def _write_addresses(path: Path, addrs: Sequence[str]) -> None:
    from fedstore.fsutil import write_atomic

    text = "".join(f"{a}\n" for a in addrs).encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: fh.write(text))
    path.chmod(0o644)  # readers in other containers: mkstemp's 0600 would lock them out


async def _stop_on(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("%s received: stopping", signal.Signals(signum).name)
        scope.cancel()
        return


async def until_stopped(main: Callable[[], Awaitable[T]], stop_signals: Sequence[int]) -> T | None:
    """Run *main* to its end (its result) or until one of *stop_signals* arrives (None).

    A signal cancels *main*, whose cleanup then runs as on any cancellation
    (the node closes its catalog and records the run's end); call
    :func:`exit_cleanly_on` first so a signal during start-up is not a kill.
    How ``fedstore aggregate`` and ``fedstore train`` run as services.
    """
    import trio

    result: list[T] = []
    with trio.open_signal_receiver(*map(signal.Signals, stop_signals)) as signals:
        async with trio.open_nursery() as top:
            top.start_soon(_stop_on, signals, top.cancel_scope)
            if _early_stop:  # arrived before the receiver was in place
                top.cancel_scope.cancel()

            async def run() -> None:
                result.append(await main())
                top.cancel_scope.cancel()

            top.start_soon(run)
    return result[0] if result else None


async def run_node(
    config: NodeConfig,
    out: Output,
    source: Source | None,
    *,
    stop_signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP),
    control: bool = True,
    address_file: Path | None = None,
) -> int:
    """Run a node until it is asked to stop (see the module docstring); returns 0.

    With *address_file*, the addresses peers should dial (one full multiaddr
    per line) are written there, atomically, once the node is ready: how a
    container or a script hands the bootstrap address to trainers.
    """
    import trio

    from fedstore.cli.control import serve_control
    from fedstore.node import open_node

    failures = 0
    with trio.open_signal_receiver(*map(signal.Signals, stop_signals)) as signals:
        async with trio.open_nursery() as top:
            top.start_soon(_stop_on, signals, top.cancel_scope)
            if _early_stop:  # arrived before the receiver was in place
                top.cancel_scope.cancel()
            router = EventRouter(out)
            async with open_node(config, on_event=router, on_message=out.message) as node:
                if config.federation:  # members only from here on
                    from fedstore.federation.nodepeer import join_federation

                    membership = await join_federation(node)
                    out.event("FEDERATION", membership.cid)
                session = Session(node)
                try:
                    async with trio.open_nursery() as nursery:
                        if control:
                            await nursery.start(serve_control, session, config.data_dir)
                        if address_file is not None:
                            await trio.to_thread.run_sync(
                                _write_addresses, address_file, node.addrs()
                            )
                        out.event("READY", node.peer_id)
                        if not out.machine and source is not None:
                            out.info("Type 'help' for the commands, Tab to complete.")
                        if source is not None:
                            nursery.start_soon(source.feed, session, out)
                        await session.stop_requested.wait()
                        await session.drain()
                        nursery.cancel_scope.cancel()
                finally:
                    failures = session.failures
            top.cancel_scope.cancel()
    out.event("EXIT", failures)
    return 0
