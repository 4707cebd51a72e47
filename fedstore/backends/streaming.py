"""Streaming uploads and downloads for HTTP backends (part of the public backend API).

* Uploads are built by :class:`MultipartBody` and :func:`iter_source` as async
  byte iterators with an exact ``Content-Length``: nothing is read whole into
  memory.
* Downloads go through :func:`stream_download`, which retries before the first
  byte and resumes after a broken connection from the byte it had reached.
* :class:`CidTap` computes the CID of bytes as they stream past, so a backend
  can compare it with what the service reports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import httpx
import trio

from fedstore.backends.http import (
    Classifier,
    RetryPolicy,
    error_from_response,
    read_error_body,
    transport_error,
)
from fedstore.errors import RateLimitedError, UnavailableError
from fedstore.ipld.cidstr import same_cid

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CidTap",
    "MultipartBody",
    "iter_source",
    "read_multipart",
    "same_cid",
    "source_size",
    "stream_download",
]

log = logging.getLogger("fedstore.backends.http")

#: Read size for streaming files and responses (1 MiB).
DEFAULT_CHUNK_SIZE = 1 << 20


def source_size(source: bytes | os.PathLike[str]) -> int:
    """Length in bytes of an ``add`` source (bytes or file path)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    return os.stat(source).st_size


OnChunk = Callable[[int, bytes], Awaitable[None]]


async def iter_source(
    source: bytes | os.PathLike[str],
    *,
    offset: int = 0,
    length: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: OnChunk | None = None,
) -> AsyncIterator[bytes]:
    """Yield *length* bytes of *source* from *offset* in chunks, never loading it whole.

    Files are read through trio's worker threads. *on_chunk(offset, data)* is
    awaited for every chunk before it is yielded (e.g. to hash it).
    """
    end = source_size(source) if length is None else offset + length
    pos = offset
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        while pos < end:
            chunk = bytes(view[pos : min(end, pos + chunk_size)])
            if on_chunk is not None:
                await on_chunk(pos, chunk)
            pos += len(chunk)
            yield chunk
        return
    async with await trio.open_file(Path(source), "rb") as f:
        await f.seek(offset)
        while pos < end:
            chunk = await f.read(min(chunk_size, end - pos))
            if not chunk:
                raise UnavailableError(f"{source}: file shrank while it was being uploaded")
            if on_chunk is not None:
                await on_chunk(pos, chunk)
            pos += len(chunk)
            yield chunk


def _quote_disposition(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


class MultipartBody:
    """A ``multipart/form-data`` body streamed from a file, with an exact length.

    *fields* are small text parts sent before the file part. Iterating the
    object starts a fresh pass each time (so a retried request can resend it).
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        *,
        file_field: str,
        filename: str,
        source: bytes | os.PathLike[str],
        content_type: str = "application/octet-stream",
        boundary: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_chunk: OnChunk | None = None,
    ) -> None:
        self.boundary = boundary or f"fedstore-{os.urandom(12).hex()}"
        self._source = source
        self._chunk_size = chunk_size
        self._on_chunk = on_chunk
        b = self.boundary
        head = bytearray()
        for name, value in fields:
            head += (
                f'--{b}\r\nContent-Disposition: form-data; name="{_quote_disposition(name)}"'
                f"\r\n\r\n{value}\r\n"
            ).encode()
        head += (
            f'--{b}\r\nContent-Disposition: form-data; name="{_quote_disposition(file_field)}"; '
            f'filename="{_quote_disposition(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._head = bytes(head)
        self._tail = f"\r\n--{b}--\r\n".encode()
        self.file_size = source_size(source)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.content_length)}

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        async for chunk in iter_source(
            self._source, chunk_size=self._chunk_size, on_chunk=self._on_chunk
        ):
            yield chunk
        yield self._tail


async def stream_download(
    client: httpx.AsyncClient,
    make_request: Callable[[int], httpx.Request],
    *,
    backend: str,
    action: str,
    redact: Callable[[str], str],
    policy: RetryPolicy,
    classify: Classifier | None = None,
    auth: httpx.Auth | None = None,
    expected_length: Callable[[httpx.Response], int | None] | None = None,
    ranged: bool = False,
) -> AsyncIterator[bytes]:
    """Yield a response body in chunks, retrying and resuming on transport failures.

    *make_request(offset)* builds the request for the bytes from *offset*
    (offset 0 first; a later offset after a break). With ``ranged=True`` the
    request carries a ``Range`` header, and a server that ignores it (200
    instead of 206) has its first *offset* bytes skipped. When
    *expected_length* gives the length of a response's body (e.g. from a
    length header), a body that ends early counts as a broken transfer.
    Errors before and during the stream are fedstore errors; retryable ones
    are retried up to ``policy.attempts`` in total.
    """
    offset = 0
    attempt = 1
    while True:
        request = make_request(offset)
        if ranged and offset:
            request.headers["Range"] = f"bytes={offset}-"
        target = redact(f"{request.url.scheme}://{request.url.netloc.decode()}")
        try:
            response = await (
                client.send(request, stream=True)
                if auth is None
                else client.send(request, stream=True, auth=auth)
            )
        except httpx.TransportError as exc:
            err: UnavailableError = transport_error(
                exc, backend=backend, action=action, target=target, redact=redact
            )
            cause: BaseException = exc
        else:
            try:
                if not response.is_success:
                    body = await read_error_body(response, redact)
                    raise error_from_response(
                        response,
                        body,
                        backend=backend,
                        action=action,
                        classify=classify,
                        redact=redact,
                    )
                skip = offset if (offset and ranged and response.status_code != 206) else 0
                total = expected_length(response) if expected_length is not None else None
                start = offset
                seen = 0  # body bytes of this response, skipped ones included
                try:
                    async for chunk in response.aiter_bytes():
                        seen += len(chunk)
                        if skip:
                            drop = min(skip, len(chunk))
                            chunk = chunk[drop:]
                            skip -= drop
                            if not chunk:
                                continue
                        offset += len(chunk)
                        yield chunk
                except httpx.TransportError as exc:
                    if offset > start:
                        attempt = 0  # progress was made: give the retry budget back
                    raise transport_error(
                        exc, backend=backend, action=action, target=target, redact=redact
                    ) from exc
                if total is not None and seen < total:
                    if offset > start:
                        attempt = 0
                    raise UnavailableError(
                        f"{backend}: {action}: stream ended early at byte {offset}"
                        f" ({seen} of {total} bytes of the response)",
                        backend=backend,
                    )
                return
            except UnavailableError as exc:
                err, cause = exc, exc
            finally:
                await response.aclose()
        retry_after = err.retry_after if isinstance(err, RateLimitedError) else None
        if attempt >= policy.attempts or (
            retry_after is not None and retry_after > policy.max_retry_after
        ):
            if cause is err:
                raise err
            raise err from cause
        wait = policy.delay(max(1, attempt), retry_after)
        log.warning(
            "%s: %s failed at byte %d (%s); retry %d/%d in %.1fs",
            backend,
            action,
            offset,
            err,
            max(1, attempt),
            policy.attempts - 1,
            wait,
        )
        await policy.sleep(wait)
        attempt += 1


class CidTap:
    """Compute fedstore's CID of an upload from the bytes as they are sent.

    Pass an instance as ``on_chunk`` to :func:`iter_source` /
    :class:`MultipartBody`. Bytes are hashed once even when a retried or
    resumed upload sends them again (only bytes past the high-water mark
    count); hashing runs in a worker thread. :meth:`cid` finishes it.
    """

    def __init__(self, cid_version: int) -> None:
        from fedstore.ipld.cid import CidBuilder, DagParams

        self._builder = CidBuilder(DagParams.kubo(cid_version))
        self._seen = 0

    @property
    def seen(self) -> int:
        """Bytes hashed so far."""
        return self._seen

    async def __call__(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if end <= self._seen:
            return
        if offset > self._seen:
            raise RuntimeError(f"CidTap: gap in upload stream ({self._seen} -> {offset})")
        piece = chunk[self._seen - offset :]
        await trio.to_thread.run_sync(self._builder.update, piece)
        self._seen = end

    async def cid(self, source: bytes | os.PathLike[str], size: int) -> str:
        """The CID of *source*; hashes whatever the upload did not send (if anything)."""
        if self._seen < size:
            async for _ in iter_source(source, offset=self._seen, on_chunk=self):
                pass
        return await trio.to_thread.run_sync(self._builder.finalize)


FieldSink = Callable[[str, str], Awaitable[None]]
FileSink = Callable[[str, str, bytes], Awaitable[None]]


def _disposition_params(header_block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in header_block.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            for item in value.split(";")[1:]:
                k, _, v = item.strip().partition("=")
                out[k.strip().lower()] = v.strip().strip('"')
        elif key.strip():
            out[f"header:{key.strip().lower()}"] = value.strip()
    return out


async def read_multipart(
    stream: AsyncIterator[bytes] | Iterable[bytes],
    boundary: str,
    *,
    on_field: FieldSink,
    on_file: FileSink,
    max_field: int = 1 << 20,
) -> None:
    """Parse a streamed ``multipart/form-data`` body without holding a file part in memory.

    Used by fake services in tests and benchmarks. Text parts (no
    ``filename``) are passed whole to ``on_field(name, value)``; file parts
    are passed piece by piece to ``on_file(name, filename, chunk)`` (a final
    call with an empty chunk marks the end of a part). Raises ValueError on a
    malformed body. *stream* is always read to its end (an epilogue is
    ignored, a refused body drained), so the generators producing it finish.
    """
    delim = b"\r\n--" + boundary.encode()
    keep = len(delim) + 4
    buf = bytearray(b"\r\n")  # the body starts with "--boundary": unify with delim
    state = "preamble"
    params: dict[str, str] = {}
    field_buf = bytearray()

    async def chunks() -> AsyncGenerator[bytes]:
        if isinstance(stream, Iterable):
            for c in stream:
                yield c
        else:
            async for c in stream:
                yield c

    async def emit(data: bytes) -> None:
        if "filename" in params:
            if data:
                await on_file(params.get("name", ""), params["filename"], data)
        else:
            field_buf.extend(data)
            if len(field_buf) > max_field:
                raise ValueError("multipart text part too large")

    async def finish_part() -> None:
        if "filename" in params:
            await on_file(params.get("name", ""), params["filename"], b"")
        else:
            await on_field(params.get("name", ""), field_buf.decode("utf-8", "replace"))
        field_buf.clear()

    source = chunks()
    try:
        eof = False
        while True:
            progressed = True
            while progressed:
                progressed = False
                if state in ("preamble", "body"):
                    idx = buf.find(delim)
                    if idx >= 0:
                        if state == "body":
                            await emit(bytes(buf[:idx]))
                            await finish_part()
                        del buf[: idx + len(delim)]
                        state = "after-delim"
                        progressed = True
                    elif state == "body" and len(buf) > keep:
                        await emit(bytes(buf[: len(buf) - keep]))
                        del buf[: len(buf) - keep]
                if state == "after-delim" and len(buf) >= 2:
                    if buf[:2] == b"--":
                        return
                    if buf[:2] != b"\r\n":
                        raise ValueError("malformed multipart delimiter")
                    del buf[:2]
                    state = "headers"
                    progressed = True
                if state == "headers":
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        params = _disposition_params(bytes(buf[:end]))
                        del buf[: end + 4]
                        state = "body"
                        progressed = True
                    elif len(buf) > 16384:
                        raise ValueError("multipart part headers too long")
            if eof:
                raise ValueError("multipart body ended before the closing boundary")
            try:
                chunk = await source.__anext__()
            except StopAsyncIteration:
                eof = True
                continue
            buf += chunk
    finally:
        # Read the body to its end, as a server reads Content-Length bytes: the
        # epilogue after the closing boundary is ignored (RFC 2046 5.1.1) and a
        # refused body is drained, so every async generator producing the body
        # finishes here instead of being left to the garbage collector.
        try:
            async for _ in source:
                pass
        finally:
            await source.aclose()
