"""fedstore.backends.http: retry policy, error mapping, redaction, streaming helpers."""

from __future__ import annotations

import email.utils
import random
from pathlib import Path

import httpx
import pytest
from _doubles import Sleeps
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstore.backends.http import (
    RateLimiter,
    Redactor,
    RetryPolicy,
    Secret,
    error_from_response,
    parse_retry_after,
    send,
    transport_error,
    with_retries,
)
from fedstore.backends.streaming import (
    CidTap,
    MultipartBody,
    iter_source,
    read_multipart,
    same_cid,
    stream_download,
)
from fedstore.errors import (
    AuthError,
    BackendError,
    NotFoundError,
    QuotaError,
    RateLimitedError,
    UnavailableError,
)
from fedstore.ipld.cid import cid_of_bytes


def policy(attempts: int = 4, **kw: object) -> tuple[RetryPolicy, Sleeps]:
    sleeps = Sleeps()
    return RetryPolicy(attempts=attempts, sleep=sleeps, rng=random.Random(7), **kw), sleeps  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    p, _ = policy(base_delay=1.0, max_delay=5.0, jitter=0.5)
    for retry, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        for _ in range(50):
            d = p.delay(retry)
            assert nominal * 0.5 <= d <= nominal


def test_jitter_spreads_delays() -> None:
    p, _ = policy(base_delay=1.0, jitter=0.5)
    assert len({round(p.delay(3), 6) for _ in range(20)}) > 10


def test_retry_after_is_never_shortened() -> None:
    p, _ = policy(base_delay=1.0, jitter=0.5)
    for _ in range(50):
        assert 12.0 <= p.delay(1, retry_after=12.0) <= 12.5


async def test_with_retries_retries_unavailable_then_succeeds() -> None:
    p, sleeps = policy(attempts=4)
    calls = 0

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise UnavailableError("down")
        return "ok"

    assert await with_retries(op, policy=p, backend="t", action="op") == "ok"
    assert calls == 3 and len(sleeps.delays) == 2


@pytest.mark.parametrize(
    "exc", [AuthError("no"), NotFoundError("no"), QuotaError("no"), BackendError("no")]
)
async def test_with_retries_does_not_retry_client_errors(exc: BackendError) -> None:
    p, sleeps = policy()
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise exc

    with pytest.raises(type(exc)):
        await with_retries(op, policy=p, backend="t", action="op")
    assert calls == 1 and sleeps.delays == []


async def test_with_retries_gives_up_after_attempts() -> None:
    p, sleeps = policy(attempts=3)
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise UnavailableError(f"down {calls}")

    with pytest.raises(UnavailableError, match="down 3"):
        await with_retries(op, policy=p, backend="t", action="op")
    assert calls == 3 and len(sleeps.delays) == 2


async def test_with_retries_honours_retry_after_and_refuses_huge_waits() -> None:
    p, sleeps = policy(attempts=3, max_retry_after=60.0)
    answers = [
        RateLimitedError("slow", retry_after=9.0),
        RateLimitedError("slow", retry_after=600.0),
    ]

    async def op() -> None:
        raise answers.pop(0)

    with pytest.raises(RateLimitedError) as info:
        await with_retries(op, policy=p, backend="t", action="op")
    assert info.value.retry_after == 600.0
    assert len(sleeps.delays) == 1 and sleeps.delays[0] >= 9.0


# --------------------------------------------------------------------------- Retry-After parsing


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "60"}), now=now) == 60
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == pytest.approx(
        30, abs=1
    )
    assert (
        parse_retry_after(httpx.Headers({"X-RateLimit-Reset": str(int(now + 45))}), now=now) == 45
    )
    assert parse_retry_after(httpx.Headers({"X-RateLimit-Reset": "12"}), now=now) == 12
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert parse_retry_after(httpx.Headers({}), now=now) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "-5"}), now=now) == 0


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BackendError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (402, QuotaError),
        (413, QuotaError),
        (408, UnavailableError),
        (429, RateLimitedError),
        (500, UnavailableError),
        (502, UnavailableError),
        (503, UnavailableError),
    ],
)
def test_status_mapping(status: int, cls: type[BackendError]) -> None:
    response = httpx.Response(
        status, headers={"Retry-After": "5"}, request=httpx.Request("GET", "https://x")
    )
    err = error_from_response(response, '{"message": "boom"}', backend="svc", action="do it")
    assert type(err) is cls
    assert err.backend == "svc"
    assert "svc: do it failed" in str(err) and "boom" in str(err)
    if cls is RateLimitedError:
        assert isinstance(err, RateLimitedError) and err.retry_after == 5
    if status == 400:
        assert not isinstance(err, UnavailableError)


def test_classifier_takes_precedence() -> None:
    response = httpx.Response(500, request=httpx.Request("GET", "https://x"))
    err = error_from_response(
        response, "x", backend="svc", action="a", classify=lambda r, b: NotFoundError("mine")
    )
    assert str(err) == "mine"


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (httpx.ConnectError("refused"), "could not connect"),
        (httpx.ReadTimeout("slow"), "timed out"),
        (httpx.RemoteProtocolError("eof"), "connection broke"),
        (httpx.ReadError("reset"), "network error"),
    ],
)
def test_transport_errors_are_unavailable(exc: Exception, words: str) -> None:
    err = transport_error(exc, backend="svc", action="get", target="https://h")
    assert isinstance(err, UnavailableError) and words in str(err) and "https://h" in str(err)


def test_transport_error_never_quotes_our_own_invalid_request() -> None:
    """h11's text for an illegal header quotes the header value: a credential."""
    exc = httpx.LocalProtocolError("Illegal header value b'Bearer tok-3141592653\\nX: 1'")
    err = transport_error(exc, backend="svc", action="get", target="https://h")
    assert isinstance(err, UnavailableError) and "could not send the request" in str(err)
    assert "tok-3141592653" not in str(err)


def test_transport_error_text_is_redacted() -> None:
    exc = httpx.ReadError("peer said tok-2718281828 was wrong")
    err = transport_error(
        exc, backend="svc", action="get", target="https://h", redact=Redactor(["tok-2718281828"])
    )
    assert "tok-2718281828" not in str(err) and "peer said *** was wrong" in str(err)


async def test_send_reads_error_body_and_redacts() -> None:
    secret = "sk-live-0123456789abcdef"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad key {secret}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(AuthError) as info:
            await send(
                client,
                client.build_request("GET", "https://svc.test/x"),
                backend="svc",
                action="get",
                redact=Redactor([secret]),
            )
    assert secret not in str(info.value) and "***" in str(info.value)


# --------------------------------------------------------------------------- secrets


def test_secret_never_shows() -> None:
    s = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2-very-secret"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_redactor_hides_whole_secrets_and_jwt_segments() -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    r = Redactor([Secret(jwt), "abc", None])
    text = f"token {jwt}; payload {jwt.split('.')[1]}; sig {jwt.split('.')[2]}; short abc"
    out = r(text)
    for part in jwt.split("."):
        assert part not in out
    assert "short abc" in out  # too short to be a secret worth masking
    assert "eyJ" not in repr(r)


# --------------------------------------------------------------------------- streaming


@settings(max_examples=30, deadline=None)
@given(
    data=st.binary(max_size=5000),
    fields=st.lists(
        st.tuples(st.text("abcdefghij_", min_size=1, max_size=8), st.text(max_size=40)), max_size=3
    ),
    piece=st.integers(min_value=1, max_value=700),
    chunk=st.integers(min_value=1, max_value=999),
)
async def test_multipart_round_trip(
    data: bytes, fields: list[tuple[str, str]], piece: int, chunk: int
) -> None:
    fields = [(k, v.replace("\r", "")) for k, v in dict(fields).items()]
    body = MultipartBody(
        fields, file_field="file", filename="a b.bin", source=data, chunk_size=chunk
    )
    raw = b"".join([c async for c in body])
    assert len(raw) == body.content_length
    got_fields: dict[str, str] = {}
    got = bytearray()

    async def on_field(name: str, value: str) -> None:
        got_fields[name] = value

    async def on_file(name: str, filename: str, c: bytes) -> None:
        assert (name, filename) == ("file", "a b.bin")
        got.extend(c)

    await read_multipart(
        [raw[i : i + piece] for i in range(0, len(raw), piece)],
        body.boundary,
        on_field=on_field,
        on_file=on_file,
    )
    assert got_fields == dict(fields) and bytes(got) == data
    # a second pass (a retried request) yields the same bytes
    assert b"".join([c async for c in body]) == raw


async def test_read_multipart_rejects_truncated_body() -> None:
    body = MultipartBody([], file_field="file", filename="x", source=b"payload")
    raw = b"".join([c async for c in body])

    async def ignore(*_: object) -> None:
        return None

    with pytest.raises(ValueError, match="closing boundary"):
        await read_multipart([raw[:-10]], body.boundary, on_field=ignore, on_file=ignore)


async def test_iter_source_file_range(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 10)
    got = b"".join([c async for c in iter_source(path, offset=100, length=1000, chunk_size=77)])
    assert got == path.read_bytes()[100:1100]


async def test_cid_tap_hashes_each_byte_once_across_retries() -> None:
    data = bytes(range(256)) * 3000
    tap = CidTap(0)
    # first attempt sends 300 kB then fails; retry starts again from 0
    async for _ in iter_source(data, length=300_000, chunk_size=65536, on_chunk=tap):
        pass
    async for _ in iter_source(data, chunk_size=100_000, on_chunk=tap):
        pass
    assert await tap.cid(data, len(data)) == cid_of_bytes(data, 0)


def test_same_cid_ignores_multibase_spelling() -> None:
    cid = cid_of_bytes(b"x", 1)
    assert same_cid(cid, cid)
    assert not same_cid(cid, cid_of_bytes(b"y", 1))
    assert not same_cid(cid, "garbage")


class Flaky(httpx.AsyncBaseTransport):
    """Serves *data* in pieces, breaking the connection after *cut* bytes per answer."""

    def __init__(self, data: bytes, cut: int, *, honour_offset: bool = True) -> None:
        self.data, self.cut, self.honour_offset = data, cut, honour_offset
        self.offsets: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        self.offsets.append(offset)
        rest = self.data[offset:]

        async def body():  # type: ignore[no-untyped-def]
            yield rest[: self.cut]
            if len(rest) > self.cut:
                raise httpx.ReadError("connection reset", request=request)

        return httpx.Response(200, content=body())


async def test_stream_download_resumes_from_offset() -> None:
    data = bytes(range(256)) * 400
    transport = Flaky(data, 30_000)
    p, sleeps = policy(attempts=2)
    async with httpx.AsyncClient(transport=transport) as client:
        got = b"".join(
            [
                c
                async for c in stream_download(
                    client,
                    lambda off: client.build_request(
                        "GET", "https://s.test/x", params={"offset": off} if off else None
                    ),
                    backend="s",
                    action="get",
                    redact=Redactor(),
                    policy=p,
                )
            ]
        )
    assert got == data
    assert transport.offsets == [0, 30_000, 60_000, 90_000]
    assert len(sleeps.delays) == 3


async def test_stream_download_without_progress_gives_up() -> None:
    transport = Flaky(b"x" * 100, 0)
    p, sleeps = policy(attempts=3)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(UnavailableError, match="network error"):
            async for _ in stream_download(
                client,
                lambda off: client.build_request("GET", "https://s.test/x"),
                backend="s",
                action="get",
                redact=Redactor(),
                policy=p,
            ):
                pass
    assert len(transport.offsets) == 3 and len(sleeps.delays) == 2


async def test_rate_limiter_bucket() -> None:
    now = [100.0]
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(60, clock=lambda: now[0], sleep=sleep)
    for _ in range(60):
        await limiter.acquire()
    assert waits == []
    await limiter.acquire()
    assert waits == [pytest.approx(1.0)]
    off = RateLimiter(0)
    await off.acquire()
