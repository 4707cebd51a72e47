"""Transport fixes for py-libp2p 0.8.1 (Noise + yamux over TCP), carried until upstream.

Profiling a 100 MB bitswap transfer showed the Noise and yamux layers
spending most of their time on per-frame Python work and system calls, not
on cryptography. :func:`apply` patches five places; each keeps the wire
format byte for byte (go-libp2p and Kubo interoperate as before) and is
described in ``docs/BITSWAP.md`` ("Transport fixes") so it can go upstream:

1. **yamux frames fit one Noise message.** 0.8.1 writes 65,536-byte yamux
   frames (12-byte header + 65,524 bytes), but a Noise transport message
   holds at most 65,519 bytes of plaintext, so every frame became two Noise
   messages (65,519 + 17 bytes): two encryptions, two writes, two reads.
   Frames are now at most 65,519 bytes including the header.
2. **One write per stream write, no polling.** ``YamuxStream.write`` sent each frame
   with its own ``_write_frame`` (lock, debug formatting, Noise write,
   socket send). The frames of one write (up to the send window and
   :data:`WRITE_BATCH` bytes) now go out together: Noise encrypts each
   65,519-byte piece and the socket gets them in one ``send_all``.
   ``Yamux._write_frame`` no longer decodes every header it writes to build
   a debug message nobody reads. A writer whose send window is exhausted
   wakes when the peer's WINDOW_UPDATE arrives (``send_window`` became a
   property that sets an event when it grows) instead of polling every
   10 ms, which cost up to 10 ms per window's worth of data.
3. **go-yamux window credit.** 0.8.1 defaults ``PY_YAMUX_RELEASE_ON_READ``
   on: every read of a stream sends a WINDOW_UPDATE frame (bitswap's varint
   is read byte by byte, so three updates per message). Credit is now
   returned as go-yamux does: once half the window has been consumed.
   ``PY_YAMUX_RELEASE_ON_READ=1`` in the environment restores upstream's
   behaviour.
4. **Buffered Noise reads.** The Noise transport reader asked the socket for
   2 bytes (length), then for the body: two or more system calls and trio
   round trips per message. It now reads up to :data:`RECV_SIZE` bytes at a
   time and cuts messages out of its buffer. Only the transport phase reads
   ahead (the handshake reader is unchanged, so no byte of the transport
   phase can be swallowed by the handshake). A message cut from the buffer
   still yields to the scheduler once, as a socket read does.
5. **SecureSession.read without BytesIO.** Reads of exactly one decrypted
   message return it without a copy; remainders are kept as (bytes, offset).

Applied once per process, only when the installed py-libp2p is the version
the patches were written against (:data:`PATCHED_VERSION`); otherwise
:func:`apply` leaves py-libp2p alone and returns False.
"""

from __future__ import annotations

import logging
import os
import struct
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import trio

__all__ = ["PATCHED_VERSION", "RECV_SIZE", "WRITE_BATCH", "apply", "applied"]

log = logging.getLogger(__name__)

#: The py-libp2p release these patches were written and tested against.
PATCHED_VERSION = "0.8.1"
#: Largest socket read of the buffered Noise reader.
RECV_SIZE = 256 * 1024
#: Most payload bytes one ``YamuxStream.write`` batches into one socket write.
WRITE_BATCH = 256 * 1024

#: Noise: 65,535-byte messages, 16 of them the Poly1305 tag.
_NOISE_PLAINTEXT = 65535 - 16
_YAMUX_HEADER = struct.Struct("!BBHII")

_applied = False


def applied() -> bool:
    """Whether :func:`apply` patched py-libp2p in this process."""
    return _applied


def _installed_version() -> str | None:
    try:
        return version("libp2p")
    except PackageNotFoundError:
        return None


def apply() -> bool:
    """Patch py-libp2p's Noise and yamux layers (idempotent); False if not applied.

    Set ``FEDSTORE_LIBP2P_PATCHES=0`` to run py-libp2p unpatched (for
    comparisons).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("FEDSTORE_LIBP2P_PATCHES", "1").strip().lower() in ("0", "false", "no"):
        return False
    found = _installed_version()
    if found != PATCHED_VERSION:
        log.info(
            "py-libp2p %s is installed; transport patches are for %s and are not applied",
            found,
            PATCHED_VERSION,
        )
        return False
    _patch_yamux()
    _patch_noise()
    _patch_secure_session()
    _applied = True
    return True


# -- yamux ---------------------------------------------------------------------------------


def _patch_yamux() -> None:
    from libp2p.stream_muxer.exceptions import MuxedStreamError
    from libp2p.stream_muxer.yamux import yamux as ym

    header_size = ym.HEADER_SIZE
    frame_payload = _NOISE_PLAINTEXT - header_size
    type_data = ym.TYPE_DATA
    pack = _YAMUX_HEADER.pack

    if "PY_YAMUX_RELEASE_ON_READ" not in os.environ:
        ym._yamux_release_on_read = lambda: False

    async def write(self: Any, data: bytes) -> None:
        if self.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        view = memoryview(data)
        total = len(view)
        sent = 0
        while sent < total:
            parts: list[bytes | memoryview] = []
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    budget = min(self.send_window, total - sent, WRITE_BATCH)
                    if budget > 0:
                        self.send_window -= budget
                        end = sent + budget
                        while sent < end:
                            n = min(frame_payload, end - sent)
                            parts.append(pack(0, type_data, 0, self.stream_id, n))
                            parts.append(view[sent : sent + n])
                            sent += n
            if parts:
                await self.conn._write_frame(b"".join(parts))
                continue
            # zero window: wait for the peer's WINDOW_UPDATE (at most 5 s, as upstream)
            self._zero_window_waits += 1
            with trio.move_on_after(5.0) as cancel_scope:
                while self.send_window <= 0 and not self.closed:
                    event = self.__dict__.get("_fs_window_event")
                    if event is None or event.is_set():
                        event = self._fs_window_event = trio.Event()
                    with trio.move_on_after(0.05):  # also notice a close
                        await event.wait()
            if cancel_scope.cancelled_caught:
                raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

    async def write_frame(self: Any, data: bytes) -> None:
        async with self._write_lock:
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()

    def get_send_window(self: Any) -> int:
        return self.__dict__.get("_fs_send_window", 0)  # type: ignore[no-any-return]

    def set_send_window(self: Any, value: int) -> None:
        grew = value > self.__dict__.get("_fs_send_window", 0)
        self.__dict__["_fs_send_window"] = value
        event = self.__dict__.get("_fs_window_event")
        if grew and event is not None:
            event.set()

    setattr(ym.YamuxStream, "send_window", property(get_send_window, set_send_window))  # noqa: B010

    ym.YamuxStream.write = write  # type: ignore[method-assign]
    ym.Yamux._write_frame = write_frame  # type: ignore[method-assign]


# -- Noise ---------------------------------------------------------------------------------


def _patch_noise() -> None:
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.security.noise import io as nio

    cls = nio.NoiseTransportReadWriter

    async def read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
        buf: bytearray | None = self.__dict__.get("_fs_rbuf")
        if buf is None:
            buf = self._fs_rbuf = bytearray()
            self._fs_rpos = 0
        pos: int = self._fs_rpos
        conn = self.read_writer.read_write_closer
        need = 2
        length = -1
        waited = False
        while True:
            have = len(buf) - pos
            if length < 0 and have >= 2:
                length = (buf[pos] << 8) | buf[pos + 1]
                need = 2 + length
            if have >= need:
                break
            waited = True
            chunk = await conn.read(RECV_SIZE)
            if not chunk:
                raise IncompleteReadError(
                    f"Connection closed during read operation: expected {need} bytes "
                    f"but received {have} bytes",
                    expected_bytes=need,
                    received_bytes=have,
                )
            if pos and pos == len(buf):
                buf.clear()
                pos = 0
            buf += chunk
        body = bytes(buf[pos + 2 : pos + need])
        pos += need
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos > RECV_SIZE:
            del buf[:pos]
            pos = 0
        self._fs_rpos = pos
        if not waited:
            # yield as a socket read would: tasks woken by the previous message
            # (stream readers) run before the next one is handled
            await trio.lowlevel.checkpoint()
        if prefix_encoded:
            body = body[len(self.prefix) :]
        return bytes(self.decrypt(body))

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        size = len(msg)
        if size <= _NOISE_PLAINTEXT:
            pieces = [msg]
        else:
            view = memoryview(msg)
            step = _NOISE_PLAINTEXT
            pieces = [bytes(view[i : i + step]) for i in range(0, size, step)]
        out: list[bytes] = []
        for i, piece in enumerate(pieces):
            sealed = self.encrypt(bytes(piece))
            if prefix_encoded and i == 0:
                sealed = self.prefix + sealed
            out.append(len(sealed).to_bytes(2, "big"))
            out.append(sealed)
        await self.read_writer.read_write_closer.write(b"".join(out))

    cls.read_msg = read_msg  # type: ignore[method-assign]
    cls.write_msg = write_msg  # type: ignore[method-assign]


# -- SecureSession ---------------------------------------------------------------------------


def _patch_secure_session() -> None:
    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.security.secure_session import SecureSession

    SecureSession._fs_buf = b""  # type: ignore[attr-defined]
    SecureSession._fs_pos = 0  # type: ignore[attr-defined]

    async def read(self: Any, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        buf: bytes = self._fs_buf
        pos: int = self._fs_pos
        avail = len(buf) - pos
        if avail:
            if n is None or n >= avail:
                self._fs_buf, self._fs_pos = b"", 0
                out = buf if pos == 0 else buf[pos:]
                if n is None or n == avail:
                    return out
                parts = [out]
                need = n - avail
            else:
                self._fs_pos = pos + n
                return buf[pos : pos + n]
        else:
            if n is None:
                msg = await self.conn.read_msg()
                if not msg:
                    raise ConnectionClosedError("Connection closed")
                return msg  # type: ignore[no-any-return]
            parts = []
            need = n
        while need > 0:
            msg = await self.conn.read_msg()
            if not msg:
                if parts:
                    return b"".join(parts)
                raise ConnectionClosedError("Connection closed")
            if len(msg) > need:
                self._fs_buf, self._fs_pos = msg, need
                msg = msg[:need]
            parts.append(msg)
            need -= len(msg)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    SecureSession.read = read  # type: ignore[method-assign]
