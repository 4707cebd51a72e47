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
* **Streaming** lives in :mod:`fedstore.backends.streaming` (multipart
  uploads and resuming downloads built on the retries here).

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
import random
import time
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import trio

from fedstore.backends.settings import Setting
from fedstore.errors import (
    AuthError,
    BackendError,
    ConfigError,
    NotFoundError,
    QuotaError,
    RateLimitedError,
    UnavailableError,
)

__all__ = [
    "RETRY_SETTINGS",
    "Classifier",
    "HeaderAuth",
    "RateLimiter",
    "REDACT_RUN",
    "Redactor",
    "RetryPolicy",
    "Secret",
    "default_timeout",
    "display_url",
    "error_from_response",
    "json_object",
    "parse_retry_after",
    "read_error_body",
    "send",
    "transport_error",
    "with_retries",
]

log = logging.getLogger("fedstore.backends.http")

T = TypeVar("T")

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


def display_url(text: str) -> str:
    """*text* as a URL fit for a message: no user info, query or fragment (they may hold
    credentials). Used when echoing a setting that failed validation."""
    parts = urlsplit(text.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    hidden = "…" if (parts.username or parts.password or parts.query or parts.fragment) else ""
    scheme = f"{parts.scheme}://" if parts.scheme else ""
    return f"{scheme}{host}{port}{parts.path}{hidden}"


#: Shortest run of a secret's characters that is redacted wherever it appears.
REDACT_RUN = 8
#: Layers of escaping undone when looking for secrets (``\\\\u0041`` is two).
_DECODE_LEVELS = 2

_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "/": "/",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


def _decoded_view(text: str) -> tuple[str, list[int], list[int]]:
    """*text* with escapes undone, and where each of its characters came from.

    Undoes JSON/Python escapes (``\\uXXXX``, ``\\xXX``, ``\\/``, ``\\n``...),
    URL percent-encoding (``%XX``) and HTML character references
    (``&#NN;``, ``&#xNN;``), one level. Returns the decoded text and, for each
    of its characters, the start and end offsets of its source in *text*.
    """
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch, j = text[i], i + 1
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "u" and set(text[i + 2 : i + 6]) <= _HEX and i + 6 <= n:
                ch, j = chr(int(text[i + 2 : i + 6], 16)), i + 6
            elif nxt == "x" and set(text[i + 2 : i + 4]) <= _HEX and i + 4 <= n:
                ch, j = chr(int(text[i + 2 : i + 4], 16)), i + 4
            elif nxt in _SIMPLE_ESCAPES:
                ch, j = _SIMPLE_ESCAPES[nxt], i + 2
        elif ch == "%" and i + 3 <= n and set(text[i + 1 : i + 3]) <= _HEX:
            ch, j = chr(int(text[i + 1 : i + 3], 16)), i + 3
        elif ch == "&" and text.startswith("&#", i):
            end = text.find(";", i + 2, i + 12)
            body = text[i + 2 : end] if end > 0 else ""
            try:
                code = int(body[1:], 16) if body[:1] in ("x", "X") else int(body, 10)
                ch, j = chr(code), end + 1
            except ValueError:
                pass
        out.append(ch)
        starts.append(i)
        ends.append(j)
        i = j
    return "".join(out), starts, ends


def _secret_forms(raw: str) -> set[str]:
    """*raw* and the encodings of it a service may echo instead (base64 at each of the
    three byte alignments, standard and URL-safe alphabets, padding dropped)."""
    import base64

    forms = {raw}
    data = raw.encode("utf-8", "surrogatepass")
    for shift in range(3):
        chunk = data[shift:]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(chunk).decode("ascii").rstrip("=")
            # the last group may encode a partial triple: keep only whole ones
            forms.add(text[: len(text) - len(text) % 4] if len(text) % 4 else text)
    return {f for f in forms if f}


class Redactor:
    """Hide every trace of the known secrets in a text, as ``***``.

    Not only whole secrets: a service that echoes a credential may cut it,
    escape it or encode it. Redacted are

    * every run of :data:`REDACT_RUN` (8) or more characters of a secret,
      wherever it starts or ends (a token minus its last characters, one
      segment of a JWT, a line-wrapped echo); a secret shorter than that is
      redacted whole;
    * the same runs written with escapes: JSON/Python ``\\u``/``\\x``
      escapes, URL percent-encoding, HTML character references, up to two
      layers deep (and the backends redact again after decoding a JSON
      body);
    * runs of the secret's base64 encodings (standard and URL-safe).

    Matching is by the set of the secrets' 8-character pieces, so the cost is
    linear in the text and ordinary text is untouched unless it shares eight
    characters in a row with a credential. Secrets shorter than 4 characters
    are ignored (they would mask ordinary words).
    """

    def __init__(self, secrets: Iterable[Secret | str | None] = ()) -> None:
        grams: set[str] = set()
        whole: set[str] = set()
        for s in secrets:
            raw = s.reveal() if isinstance(s, Secret) else s
            if not raw or len(raw) < 4:
                continue
            for form in _secret_forms(raw):
                if len(form) < REDACT_RUN:
                    whole.add(form)
                    continue
                grams.update(form[k : k + REDACT_RUN] for k in range(len(form) - REDACT_RUN + 1))
        self._grams = frozenset(grams)
        self._whole = sorted(whole, key=len, reverse=True)
        self._count = len(grams) + len(whole)

    def _spans(self, view: str) -> list[tuple[int, int]]:
        """Spans of *view* covered by a secret piece, merged."""
        spans: list[tuple[int, int]] = []
        grams, run = self._grams, REDACT_RUN
        if grams:
            for k in range(len(view) - run + 1):
                if view[k : k + run] in grams:
                    if spans and spans[-1][1] >= k:
                        spans[-1] = (spans[-1][0], k + run)
                    else:
                        spans.append((k, k + run))
        for value in self._whole:
            start = view.find(value)
            while start >= 0:
                spans.append((start, start + len(value)))
                start = view.find(value, start + 1)
        return spans

    def __call__(self, text: str) -> str:
        if not self._count or not text:
            return text
        covered = list(self._spans(text))
        view = text
        starts, ends = list(range(len(text))), list(range(1, len(text) + 1))
        for _level in range(_DECODE_LEVELS):
            decoded, s2, e2 = _decoded_view(view)
            if len(decoded) == len(view):  # nothing (more) was escaped
                break
            # positions in the new view -> positions in the original text
            view, starts, ends = decoded, [starts[i] for i in s2], [ends[j - 1] for j in e2]
            covered += [(starts[a], ends[b - 1]) for a, b in self._spans(view)]
        if not covered:
            return text
        covered.sort()
        out: list[str] = []
        pos = 0
        for a, b in covered:
            if b <= pos:
                continue
            if a > pos:
                out.append(text[pos:a])
                out.append("***")
            elif not out or out[-1] != "***":
                out.append("***")
            pos = b
        out.append(text[pos:])
        return "".join(out)

    def __repr__(self) -> str:
        return f"<Redactor pieces={self._count}>"


class HeaderAuth(httpx.Auth):
    """httpx auth that adds fixed headers (credentials) to each request.

    Keeps credentials out of ``client.headers`` (whose repr shows custom
    headers) and lets a request use different credentials (e.g. a gateway
    token) with ``auth=...``.
    """

    def __init__(self, headers: dict[str, Secret]) -> None:
        for key, secret in headers.items():
            if any(not (" " <= ch <= "~" or ch == "\t") for ch in secret.reveal()):
                # httpx/h11 would refuse it later and quote the value (the credential) in
                # the error and in httpcore's debug log: refuse it here, without the value.
                raise ConfigError(
                    f"the credential sent in the {key!r} header contains a line break, a "
                    "control character or a non-ASCII character; check that setting (e.g. "
                    "for a stray newline or quote in .env)"
                )
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


def json_object(
    response: httpx.Response, *, backend: str, action: str, redact: Callable[[str], str]
) -> dict[str, Any]:
    """The JSON object a successful answer carries.

    Anything else raises :class:`~fedstore.errors.BackendError` quoting the
    start of what came instead, redacted before it is cut short (so no piece
    of a secret survives).
    """
    try:
        doc = json.loads(response.text)
    except ValueError as exc:
        raise BackendError(
            f"{backend}: {action}: answer is not JSON: {redact(response.text[:4096])[:120]!r}",
            backend=backend,
        ) from exc
    if not isinstance(doc, dict):
        shown = redact(repr(doc)[:4096])[:120]
        raise BackendError(
            f"{backend}: {action}: answer is not a JSON object: {shown}", backend=backend
        )
    return doc


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
    redact: Callable[[str], str] | None = None,
) -> BackendError:
    """Map a non-2xx response to fedstore's error tree.

    *body* must already be redacted; with *redact*, the error's final text
    passes through it again, since the message is built from the body's
    decoded JSON (where ``\\u`` escapes the first pass could not see as a
    secret are undone). The classifier gets the first word;
    otherwise: 401/403 → AuthError, 404/410 → NotFoundError, 402/413/507 →
    QuotaError, 429 → RateLimitedError (with ``retry_after``), 408/425/5xx →
    UnavailableError (retried), other 4xx → BackendError (not retried).
    """
    err = _error_for(response, body, backend=backend, action=action, classify=classify)
    if redact is not None:
        text = str(err)
        scrubbed = redact(text)
        if scrubbed != text:
            err.args = (scrubbed,)
    return err


def _error_for(
    response: httpx.Response,
    body: str,
    *,
    backend: str,
    action: str,
    classify: Classifier | None,
) -> BackendError:
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


def transport_error(
    exc: Exception,
    *,
    backend: str,
    action: str,
    target: str,
    redact: Callable[[str], str] | None = None,
) -> UnavailableError:
    """Map an httpx transport exception (refused, DNS, timeout, reset) to UnavailableError.

    The exception's text passes through *redact*. A
    :class:`httpx.LocalProtocolError` (our own request was invalid, e.g. a
    credential with a line break) is described without its text, which
    quotes the offending header value, credential included.
    """
    text = str(exc).strip()
    if isinstance(exc, httpx.TimeoutException):
        what = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, httpx.ConnectError):
        what = "could not connect"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = "connection broke"
    elif isinstance(exc, httpx.LocalProtocolError):
        what = "could not send the request"
        text = (
            "the request is not valid HTTP (a header value has a line break or control "
            "character: check the credentials' settings)"
        )
    else:
        what = f"network error ({type(exc).__name__})"
    if redact is not None:
        text = redact(text)
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
        ``FEDSTORE_HTTP_BACKOFF`` (first delay in seconds, default 0.5);
        see :data:`RETRY_SETTINGS`, which HTTP backends add to their own settings.

        Lower values make a chain fall over to the next backend sooner.
        """
        return cls(attempts=HTTP_ATTEMPTS.integer(env), base_delay=HTTP_BACKOFF.number(env))


HTTP_ATTEMPTS = Setting(
    "FEDSTORE_HTTP_ATTEMPTS",
    "4",
    "attempts per request of the HTTP backends",
    kind="int",
    minimum=1,
    maximum=100,
)
HTTP_BACKOFF = Setting(
    "FEDSTORE_HTTP_BACKOFF",
    "0.5",
    "first retry delay of the HTTP backends, seconds",
    kind="duration",
    minimum=0,
    maximum=600,
)
#: The retry settings every HTTP backend reads through :meth:`RetryPolicy.from_env`;
#: list them in the backend's ``settings`` (``settings = (..., *RETRY_SETTINGS)``).
RETRY_SETTINGS: tuple[Setting, ...] = (HTTP_ATTEMPTS, HTTP_BACKOFF)


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
        raise transport_error(
            exc, backend=backend, action=action, target=target, redact=redact
        ) from exc
    try:
        if response.is_success:
            try:
                await response.aread()
            except httpx.TransportError as exc:
                raise transport_error(
                    exc, backend=backend, action=action, target=target, redact=redact
                ) from exc
            return response
        body = await read_error_body(response, redact)
        raise error_from_response(
            response, body, backend=backend, action=action, classify=classify, redact=redact
        )
    finally:
        await response.aclose()
