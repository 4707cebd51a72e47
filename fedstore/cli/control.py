"""The node's local control endpoint: a Unix socket through which ``fedstore ctl`` runs commands.

``<data dir>/control.sock``, mode 0600 (only the node's user, and root, can
connect), exists while a node (``fedstore node`` or ``fedstore daemon``)
runs on that directory. The protocol is one JSON line each way::

    -> {"v": 1, "command": "peers", "args": []}
    <- {"v": 1, "command": "peers", "ok": true, "result": {...},
        "lines": [["PEERS", "1", null], ["PEER", "12D3KooW...", "  12D3KooW...  /ip4/..."]],
        "truncated": false, "error": null}

``lines`` are what the prompt would print for the command (``KEY``,
``value``, and the sentence shown to people, null for the default one;
prose has an empty key), including the node events the command caused;
``result`` is the command's JSON result (:mod:`fedstore.cli.node_commands`).
A long command (``sync``) may send progress frames before its reply, at
most five a second: ``{"v": 1, "progress": {"label": "syncing", "done": <bytes>}}``.

Bounds, so a client can never block or exhaust the node: a request is at
most 64 KiB and must arrive within 10 s; a reply holds at most 20,000 lines
and 8 MiB (``truncated`` says so); at most :data:`MAX_CLIENTS` requests run
at once, others get ``{"ok": false, "error": "busy ..."}`` at once; a client
that disconnects (or shuts down its sending side) before the reply cancels
its command. Each request runs in its own task on
the node's trio loop, beside the prompt.

A socket path longer than ``sun_path`` allows (108 bytes) is reached
through ``/proc/self/fd/<directory fd>/control.sock`` on Linux.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.errors import ConfigError, FedstoreError, NetworkError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import trio

    from fedstore.cli.node_commands import Session

__all__ = [
    "MAX_CLIENTS",
    "SOCKET_NAME",
    "Reply",
    "call",
    "serve_control",
    "socket_path",
]

SOCKET_NAME = "control.sock"
PROTOCOL = 1
MAX_CLIENTS = 4
MAX_REQUEST = 64 * 1024
MAX_REPLY = 16 << 20
REQUEST_TIMEOUT = 10.0
_SUN_PATH = 100  # sun_path is 108 bytes on Linux, 104 on BSDs: stay below both


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A name for *path* short enough for ``bind``/``connect``."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= _SUN_PATH:
        yield text
        return
    if not os.path.isdir("/proc/self/fd"):
        raise ConfigError(
            f"control socket path {text} is too long for a Unix socket: use a shorter --dir"
        )
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- server ---------------------------------------------------------------------------


def _bind(path: Path) -> socket.socket:
    """A listening Unix socket at *path*, mode 0600 from the start (bound under a temporary
    name, restricted, listening, then renamed into place)."""
    path.unlink(missing_ok=True)  # left by a node that was killed: the node lock is ours
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(tmp) as name:
            sock.bind(name)
        os.chmod(tmp, 0o600)
        sock.listen(MAX_CLIENTS * 2)
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock


async def serve_control(session: Session, data_dir: Path, *, task_status: Any = None) -> None:
    """Serve ``fedstore ctl`` requests for *session* until cancelled; removes the socket after.

    ``await nursery.start(serve_control, session, data_dir)`` returns once
    the socket accepts connections.
    """
    import trio

    path = socket_path(data_dir)
    try:
        raw = await trio.to_thread.run_sync(_bind, path)
    except OSError as exc:
        raise ConfigError(f"cannot create the control socket {path}: {exc.strerror}") from exc
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    slots = trio.CapacityLimiter(MAX_CLIENTS)
    try:
        async with listener, trio.open_nursery() as nursery:
            if task_status is not None:
                task_status.started()
            while True:
                stream = await listener.accept()
                try:
                    slots.acquire_on_behalf_of_nowait(stream)
                except trio.WouldBlock:
                    nursery.start_soon(_refuse, stream)
                    continue
                nursery.start_soon(_serve_one, session, stream, slots)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def _send(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    data = (json.dumps(reply, separators=(",", ":")) + "\n").encode("utf-8")
    await stream.send_all(data)


async def _refuse(stream: trio.SocketStream) -> None:
    import trio

    async with stream:
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
            await _send(
                stream,
                {
                    "v": PROTOCOL,
                    "ok": False,
                    "error": f"busy: the node already serves {MAX_CLIENTS} control requests",
                },
            )


async def _read_request(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError(f"request above {MAX_REQUEST} bytes")
    return bytes(buf.split(b"\n", 1)[0])


def _parse_request(raw: bytes) -> tuple[str, list[str]]:
    try:
        req = json.loads(raw)
    except ValueError:
        raise ValueError("request is not JSON") from None
    if not isinstance(req, dict) or req.get("v") != PROTOCOL:
        raise ValueError(f"unsupported request (protocol version {PROTOCOL} expected)")
    name, args = req.get("command"), req.get("args", [])
    if not isinstance(name, str) or not isinstance(args, list):
        raise ValueError("request needs a command name and a list of arguments")
    if not all(isinstance(a, str) for a in args):
        raise ValueError("arguments must be strings")
    return name, args


async def _serve_one(session: Session, stream: trio.SocketStream, slots: Any) -> None:
    import trio

    from fedstore.cli.node_output import Capture

    try:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    name, args = _parse_request(await _read_request(stream))
            except (ValueError, trio.TooSlowError) as exc:
                reason = "no request within 10 s" if isinstance(exc, trio.TooSlowError) else exc
                await _send(stream, {"v": PROTOCOL, "ok": False, "error": str(reason)})
                return
            log.debug("control: running %s (%d argument(s))", name, len(args))  # args unlogged
            frames_in, frames_out = trio.open_memory_channel[tuple[str, int]](1)

            def on_progress(label: str, done: int) -> None:
                try:
                    frames_in.send_nowait((label, done))
                except (trio.WouldBlock, trio.ClosedResourceError):
                    pass  # the client reads slowly: this update is skipped

            capture = Capture(on_progress)
            outcome = None
            with session.replying():
                async with trio.open_nursery() as nursery:
                    watch = trio.CancelScope()

                    async def watch_client() -> None:
                        with watch:
                            await _cancel_when_gone(stream, nursery.cancel_scope)

                    nursery.start_soon(watch_client)
                    nursery.start_soon(_send_progress, stream, frames_out)
                    async with frames_in:
                        outcome = await session.execute([name, *args], capture, capture=capture)
                    capture.closed = True
                    watch.cancel()  # the progress frames already queued are still sent
                if outcome is None:  # the client left: its command was cancelled
                    return
                await _send(
                    stream,
                    {
                        "v": PROTOCOL,
                        "command": outcome.name,
                        "ok": outcome.ok,
                        "result": outcome.result,
                        "error": outcome.error,
                        "lines": capture.lines,
                        "truncated": capture.truncated,
                    },
                )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client left
    finally:
        slots.release_on_behalf_of(stream)


async def _send_progress(
    stream: trio.SocketStream, frames: trio.MemoryReceiveChannel[tuple[str, int]]
) -> None:
    """Progress frames of a long command (``sync``) ahead of its reply."""
    async with frames:
        async for label, done in frames:
            await _send(stream, {"v": PROTOCOL, "progress": {"label": label, "done": done}})


async def _cancel_when_gone(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Cancel the command if the client disconnects before its reply."""
    import trio

    try:
        while await stream.receive_some(1024):
            pass  # nothing more is expected; keep reading until EOF
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


# -- client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A node's answer to one ``ctl`` request."""

    command: str
    ok: bool
    result: dict[str, Any]
    error: str | None
    lines: list[tuple[str, str, str | None]]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
            "lines": [{"key": k, "value": v} if k else {"text": h} for k, v, h in self.lines],
            "truncated": self.truncated,
        }


def call(
    data_dir: Path,
    words: Sequence[str],
    *,
    timeout: float | None = 600.0,
    on_progress: Callable[[str, int], None] | None = None,
) -> Reply:
    """Run one command on the node serving *data_dir*; NetworkError if none answers.

    *timeout* bounds the whole exchange (None: wait as long as the command runs);
    *on_progress(label, bytes)* hears a long command's progress frames.
    """
    path = socket_path(data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with _short_path(path) as name:
                sock.connect(name)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NetworkError(
                f"no node is running on {data_dir} (no control socket at {path}): start one "
                f"with 'fedstore daemon --dir {data_dir}', or pass the --dir of the running node"
            ) from None
        except PermissionError:
            raise NetworkError(
                f"not allowed to use {path} (mode 0600): run ctl as the node's user"
            ) from None
        request = {"v": PROTOCOL, "command": words[0], "args": list(words[1:])}
        sock.sendall((json.dumps(request) + "\n").encode("utf-8"))
        raw = _read_reply(sock, on_progress)
    except TimeoutError:
        raise NetworkError(
            f"the node on {data_dir} did not answer {words[0]!r} within {timeout:g} s "
            "(--timeout to wait longer)"
        ) from None
    except OSError as exc:
        raise NetworkError(f"control socket {path}: {exc.strerror or exc}") from exc
    finally:
        sock.close()
    try:
        data = json.loads(raw)
    except ValueError:
        raise NetworkError(f"the node on {data_dir} sent a malformed reply") from None
    return _reply(data, words[0])


def _read_reply(sock: socket.socket, on_progress: Callable[[str, int], None] | None) -> bytes:
    """The reply line, after any progress frames (handed to *on_progress*)."""
    buf = bytearray()
    while True:
        while b"\n" not in buf:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise NetworkError("the node closed the control connection without a reply")
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise NetworkError(f"reply above {MAX_REPLY} bytes")
        line, _, rest = bytes(buf).partition(b"\n")
        buf = bytearray(rest)
        if line.startswith(b'{"v":1,"progress"'):
            frame = json.loads(line)["progress"]
            if on_progress is not None:
                on_progress(str(frame.get("label", "")), int(frame.get("done", 0)))
            continue
        return line


def _reply(data: Any, name: str) -> Reply:
    if not isinstance(data, dict):
        raise NetworkError("malformed reply from the node")
    lines: list[tuple[str, str, str | None]] = []
    for item in data.get("lines") or []:
        if isinstance(item, list) and len(item) == 3:
            key, value, human = item
            lines.append((str(key), str(value), None if human is None else str(human)))
    if not data.get("ok") and "command" not in data:  # refused before running (busy, bad)
        raise FedstoreError(f"the node refused {name!r}: {data.get('error')}")
    result = data.get("result")
    return Reply(
        command=str(data.get("command", name)),
        ok=bool(data.get("ok")),
        result=result if isinstance(result, dict) else {},
        error=None if data.get("error") is None else str(data["error"]),
        lines=lines,
        truncated=bool(data.get("truncated")),
    )
