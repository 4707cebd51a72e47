"""Shared HTTP plumbing for backends that talk to a service over httpx.

Part of fedstore's public backend API: plugins (Kubo, Pinata, third-party)
import these helpers so that retries, error mapping, redaction and streaming
behave the same everywhere. Nothing here knows about a particular service;
each backend supplies a small *classifier* that turns a failed response into
the most specific :mod:`fedstore.errors` class, and the helpers do the rest.

Contracts
---------
* **Retries** (:func:`with_retries`): an operation is retried only when it
  raised :class:`~fedstore.errors.UnavailableError` (connection refused,
  timeout, 5xx) or its subclass :class:`~fedstore.errors.RateLimitedError`
  (429). Auth, validation, not-found, quota and CID-mismatch errors are raised
  at once. Delays grow exponentially with jitter; a ``Retry-After`` the
  service sent is honoured (and never shortened), unless it exceeds
  :attr:`RetryPolicy.max_retry_after`, in which case the error is raised so the
  caller can fall back to another backend instead of stalling.
* **Redaction** (:class:`Redactor`, :class:`Secret`): every text that reaches
  an exception or a log line passes through the backend's redactor; secrets
  are held in :class:`Secret` objects whose ``repr``/``str`` never show them,
  and credentials travel in :class:`HeaderAuth` (httpx does not print request
  headers in any repr or exception).
* **Streaming**: uploads are built by :class:`MultipartBody` and
  :func:`iter_source` as async byte iterators with an exact
  ``Content-Length`` (nothing is read whole into memory); downloads go through
  :func:`stream_download`, which retries before the first byte and resumes
  after a broken connection from the byte it had reached.

httpx note: httpcore discards HTTP trailers, so a service's ``X-Stream-Error``
trailer (Kubo) is not visible here. Backends compare the received length with
a length header where the service sends one, and the chain verifies every
byte against the CID anyway, so a truncated or corrupted stream never reaches
a caller.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from fedstore.errors import (
    AuthError,
    BackendError,
    NotFoundError,
    QuotaError,
    RateLimitedError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CidTap",
    "Classifier",
    "HeaderAuth",
    "MultipartBody",
    "RateLimiter",
    "Redactor",
    "RetryPolicy",
    "Secret",
    "default_timeout",
    "error_from_response",
    "iter_source",
    "parse_retry_after",
    "read_error_body",
    "read_multipart",
    "same_cid",
    "send",
    "source_size",
    "stream_download",
    "transport_error",
    "with_retries",
]

log = logging.getLogger("fedstore.backends.http")

T = TypeVar("T")

#: Read size for streaming files and responses (1 MiB).
DEFAULT_CHUNK_SIZE = 1 << 20
#: At most this many bytes of an error body are read and quoted in a message.
MAX_ERROR_BODY = 2048

Sleep = Callable[[float], Awaitable[None]]


def default_timeout(connect: float = 10.0, read: float = 120.0) -> httpx.Timeout:
    """Explicit timeouts for a backend client: fail fast on connect, be patient on reads."""
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


# --------------------------------------------------------------------------- secrets


class Secret:
    """A credential that never shows itself in ``repr``/``str``/logs.

    Call :meth:`reveal` at the single place the value goes on the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:  # never pickle a credential by accident
        raise TypeError("Secret values cannot be pickled")


class Redactor:
    """Replace every known secret (and its non-trivial pieces) in a text with ``***``."""

    def __init__(self, secrets: Iterable[Secret | str | None] = ()) -> None:
        values: set[str] = set()
        for s in secrets:
            raw = s.reveal() if isinstance(s, Secret) else s
            if raw and len(raw) >= 4:
                values.add(raw)
                # A JWT is header.payload.signature: a service may echo one segment.
                values.update(part for part in raw.split(".") if len(part) >= 8)
        self._values = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "***")
        return text

    def __repr__(self) -> str:
        return f"<Redactor secrets={len(self._values)}>"


class HeaderAuth(httpx.Auth):
    """httpx auth that adds fixed headers (credentials) to each request.

    Keeps credentials out of ``client.headers`` (whose repr shows custom
    headers) and lets a request use different credentials (e.g. a gateway
    token) with ``auth=...``.
    """

    def __init__(self, headers: dict[str, Secret]) -> None:
        self._headers = headers

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for key, secret in self._headers.items():
            request.headers[key] = secret.reveal()
        yield request

    def __repr__(self) -> str:
        return f"<HeaderAuth {sorted(self._headers)}>"


# --------------------------------------------------------------------------- errors

#: A backend hook: given a failed response and its (truncated, redacted) body
#: text, return a specific error, or None to use the generic mapping.
Classifier = Callable[[httpx.Response, str], BackendError | None]


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``.

    Returns None when the service gave no usable hint.
    """
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now)
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            epoch = float(reset)
        except ValueError:
            return None
        # Some services send an epoch, others a delta; an epoch is far larger.
        return max(0.0, epoch - now) if epoch > 1e9 else max(0.0, epoch)
    return None


async def read_error_body(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """Read at most :data:`MAX_ERROR_BODY` bytes of a (possibly streamed) error body."""
    try:
        raw = response.content  # already read (e.g. built in memory by a transport)
    except httpx.ResponseNotRead:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_ERROR_BODY:
                    break
        except (httpx.HTTPError, httpx.StreamError):
            pass
        raw = b"".join(chunks)
    text = raw[:MAX_ERROR_BODY].decode("utf-8", "replace")
    return redact(text.strip())


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_message(body: str) -> str:
    """Best-effort human message from a JSON error body (``Message``/``error``/``reason``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return _short(body)
    if isinstance(doc, dict):
        for key in ("Message", "message", "error", "details", "reason"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                return _short(value)
            if isinstance(value, dict):
                inner = " ".join(
                    str(value[k]) for k in ("reason", "details", "message") if value.get(k)
                )
                if inner:
                    return _short(inner)
    return _short(body)


def error_from_response(
    response: httpx.Response,
    body: str,
    *,
    backend: str,
    action: str,
    classify: Classifier | None = None,
) -> BackendError:
    """Map a non-2xx response to fedstore's error tree.

    *body* must already be redacted. The classifier gets the first word;
    otherwise: 401/403 → AuthError, 404/410 → NotFoundError, 402/413/507 →
    QuotaError, 429 → RateLimitedError (with ``retry_after``), 408/425/5xx →
    UnavailableError (retried), other 4xx → BackendError (not retried).
    """
    if classify is not None:
        specific = classify(response, body)
        if specific is not None:
            return specific
    code = response.status_code
    detail = json_message(body) if body else response.reason_phrase
    prefix = (
        f"{backend}: {action} failed ({code} {detail})"
        if detail
        else f"{backend}: {action} failed ({code})"
    )
    if code in (401, 403):
        return AuthError(f"{prefix}: check the {backend} credentials", backend=backend)
    if code in (404, 410):
        return NotFoundError(prefix, backend=backend)
    if code in (402, 413, 507):
        return QuotaError(
            f"{prefix}: the account is out of space or over its plan", backend=backend
        )
    if code == 429:
        retry_after = parse_retry_after(response.headers)
        hint = f"; retry after {retry_after:.0f}s" if retry_after is not None else ""
        return RateLimitedError(
            f"{prefix}: rate limited{hint}", backend=backend, retry_after=retry_after
        )
    if code in (408, 425) or code >= 500:
        return UnavailableError(prefix, backend=backend)
    return BackendError(prefix, backend=backend)


def transport_error(exc: Exception, *, backend: str, action: str, target: str) -> UnavailableError:
    """Map an httpx transport exception (refused, DNS, timeout, reset) to UnavailableError."""
    if isinstance(exc, httpx.TimeoutException):
        what = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, httpx.ConnectError):
        what = "could not connect"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = "connection broke"
    else:
        what = f"network error ({type(exc).__name__})"
    text = str(exc).strip()
    reason = f": {_short(text, 160)}" if text else ""
    return UnavailableError(
        f"{backend}: {action} {what} talking to {target}{reason}", backend=backend
    )


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter. ``sleep`` is injectable so tests never wait.

    ``attempts`` counts every try (1 = no retry). The n-th retry waits
    ``min(max_delay, base_delay * 2**(n-1))`` scaled by a random factor in
    ``[1 - jitter, 1]``; a server's ``Retry-After`` replaces that delay (plus a
    little jitter on top, never less than asked).
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.5
    max_retry_after: float = 120.0
    sleep: Sleep = trio.sleep
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number *retry* (1-based)."""
        if retry_after is not None:
            return retry_after + self.rng.uniform(0, self.jitter * self.base_delay)
        raw = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return raw * (1 - self.jitter * self.rng.random())

    @classmethod
    def none(cls) -> RetryPolicy:
        """Single attempt (health checks, probes)."""
        return cls(attempts=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        """``FEDSTORE_HTTP_ATTEMPTS`` (tries per request, default 4) and
        ``FEDSTORE_HTTP_BACKOFF`` (first delay in seconds, default 0.5).

        Lower values make a chain fall over to the next backend sooner.
        """
        from fedstore.errors import ConfigError

        def number(key: str, default: float, minimum: float) -> float:
            raw = env.get(key, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a number") from None
            if value < minimum:
                raise ConfigError(f"{key} must be at least {minimum:g}")
            return value

        return cls(
            attempts=int(number("FEDSTORE_HTTP_ATTEMPTS", 4, 1)),
            base_delay=number("FEDSTORE_HTTP_BACKOFF", 0.5, 0),
        )


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    backend: str,
    action: str,
) -> T:
    """Run *operation* until it succeeds or fails with a non-retryable error.

    Only :class:`UnavailableError` (incl. :class:`RateLimitedError`) is retried.
    The last error is raised unchanged after ``policy.attempts`` tries.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except UnavailableError as exc:
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
            if attempt >= policy.attempts:
                raise
            if retry_after is not None and retry_after > policy.max_retry_after:
                log.warning(
                    "%s: %s: service asks to wait %.0fs (> %.0fs); giving up for now",
                    backend,
                    action,
                    retry_after,
                    policy.max_retry_after,
                )
                raise
            wait = policy.delay(attempt, retry_after)
            log.warning(
                "%s: %s failed (%s); retry %d/%d in %.1fs",
                backend,
                action,
                exc,
                attempt,
                policy.attempts - 1,
                wait,
            )
            await policy.sleep(wait)
            attempt += 1


class RateLimiter:
    """Client-side token bucket: at most *per_minute* requests per minute, bursting to it.

    ``acquire`` waits (with the injectable *sleep*) until a token is free. A
    ``per_minute`` of 0 disables limiting.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = trio.sleep,
    ) -> None:
        self.per_minute = per_minute
        self._capacity = max(1.0, per_minute)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()

    async def acquire(self) -> None:
        if self.per_minute <= 0:
            return
        for _ in range(1000):  # bounded: each pass waits for the missing fraction
            now = self._clock()
            self._tokens = min(
                self._capacity, self._tokens + (now - self._stamp) * self.per_minute / 60.0
            )
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await self._sleep((1.0 - self._tokens) * 60.0 / self.per_minute)
        raise UnavailableError("client-side rate limiter starved")  # pragma: no cover


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    backend: str,
    action: str,
    redact: Callable[[str], str],
    classify: Classifier | None = None,
    auth: httpx.Auth | None = None,
    limiter: RateLimiter | None = None,
) -> httpx.Response:
    """Send one request (body read), returning a 2xx response or raising a fedstore error."""
    if limiter is not None:
        await limiter.acquire()
    target = redact(f"{request.url.scheme}://{request.url.netloc.decode()}")
    try:
        if auth is None:
            response = await client.send(request, stream=True)
        else:
            response = await client.send(request, stream=True, auth=auth)
    except httpx.TransportError as exc:
        raise transport_error(exc, backend=backend, action=action, target=target) from exc
    try:
        if response.is_success:
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise transport_error(exc, backend=backend, action=action, target=target) from exc
            return response
        body = await read_error_body(response, redact)
        raise error_from_response(response, body, backend=backend, action=action, classify=classify)
    finally:
        await response.aclose()


# --------------------------------------------------------------------------- streaming


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
                exc, backend=backend, action=action, target=target
            )
            cause: BaseException = exc
        else:
            try:
                if not response.is_success:
                    body = await read_error_body(response, redact)
                    raise error_from_response(
                        response, body, backend=backend, action=action, classify=classify
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
                        exc, backend=backend, action=action, target=target
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
        from fedstore.cid import CidBuilder, DagParams

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


def same_cid(a: str, b: str) -> bool:
    """Whether two CID strings name the same content (ignoring multibase spelling)."""
    if a == b:
        return True
    from fedstore.cid import parse_cid
    from fedstore.errors import InvalidCIDError

    try:
        return parse_cid(a) == parse_cid(b)
    except InvalidCIDError:
        return False


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
    malformed body.
    """
    delim = b"\r\n--" + boundary.encode()
    keep = len(delim) + 4
    buf = bytearray(b"\r\n")  # the body starts with "--boundary": unify with delim
    state = "preamble"
    params: dict[str, str] = {}
    field_buf = bytearray()

    async def chunks() -> AsyncIterator[bytes]:
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
