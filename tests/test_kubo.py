"""Kubo backend: conformance against a fake daemon, exact request shapes with pytest-httpx."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from _doubles import Sleeps
from fedstore_kubo import KuboBackend
from fedstore_kubo.address import api_url_from_env, api_url_from_text
from fedstore_kubo.testing import FakeKubo
from pytest_httpx import HTTPXMock

from fedstore.backends import BackendChain, BackendContext
from fedstore.backends.http import RetryPolicy
from fedstore.backends.streaming import read_multipart
from fedstore.backends.testing import BackendConformance, sample_bytes
from fedstore.errors import (
    AuthError,
    BackendError,
    CIDMismatchError,
    ConfigError,
    IntegrityError,
    NotConfiguredError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from fedstore.ipld.cid import cid_of_bytes

API = "http://kubo.test:5001"
TOKEN = "kubo-secret-token-0123456789"


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def kubo(sleeps: Sleeps):  # type: ignore[no-untyped-def]
    backend = KuboBackend(API, retry=RetryPolicy(attempts=3, sleep=sleeps))
    yield backend
    await backend.aclose()


def add_line(cid: str, size: int) -> bytes:
    return (json.dumps({"Name": "checkpoint", "Hash": cid, "Size": str(size + 14)}) + "\n").encode()


def kubo_error(message: str, code: int = 0) -> dict[str, object]:
    return {"Message": message, "Code": code, "Type": "error"}


# --------------------------------------------------------------------------- conformance


def _fake_kubo_backend(**kw: object) -> KuboBackend:
    fake = FakeKubo(**kw)  # type: ignore[arg-type]
    token = kw.get("token")
    return KuboBackend(
        API,
        token=str(token) if token else None,
        transport=fake,
        retry=RetryPolicy(sleep=Sleeps()),
    )


class TestKuboConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):  # type: ignore[no-untyped-def,override]
        b = _fake_kubo_backend()
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self):  # type: ignore[no-untyped-def,override]
        return _fake_kubo_backend


class TestKuboConformanceWithToken(BackendConformance):
    large_size = 262144 + 1

    @pytest.fixture
    async def backend(self, tmp_path: Path):  # type: ignore[no-untyped-def,override]
        b = _fake_kubo_backend(token=TOKEN, blob_dir=tmp_path)
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self, tmp_path: Path):  # type: ignore[no-untyped-def,override]
        return lambda: _fake_kubo_backend(token=TOKEN, blob_dir=tmp_path)


# --------------------------------------------------------------------------- add


@pytest.mark.parametrize("version", [0, 1])
async def test_add_sends_explicit_dag_params_and_streams_multipart(
    httpx_mock: HTTPXMock, kubo: KuboBackend, version: int
) -> None:
    data = sample_bytes(300_000, "add")
    cid = cid_of_bytes(data, version)
    seen: dict[str, object] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        seen["params"] = dict(request.url.params)
        seen["ctype"] = request.headers["content-type"]
        seen["length"] = int(request.headers["content-length"])
        body = await request.aread()
        seen["body_len"] = len(body)
        files: dict[str, bytearray] = {}

        async def on_field(name: str, value: str) -> None:
            raise AssertionError("add sends no text fields")

        async def on_file(name: str, filename: str, chunk: bytes) -> None:
            files.setdefault(f"{name}:{filename}", bytearray()).extend(chunk)

        boundary = seen["ctype"].split("boundary=")[1]  # type: ignore[union-attr]
        await read_multipart([body], boundary, on_field=on_field, on_file=on_file)
        seen["files"] = files
        return httpx.Response(200, content=add_line(cid, len(data)))

    httpx_mock.add_callback(handler, method="POST")
    stored = await kubo.add(data, cid_version=version, name="round 5.fsck")
    assert stored.cid == cid
    assert stored.size == len(data)
    params = seen["params"]
    assert params == {
        "cid-version": str(version),
        "raw-leaves": "true" if version == 1 else "false",
        "chunker": "size-262144",
        "hash": "sha2-256",
        "trickle": "false",
        "max-file-links": "174",
        "inline": "false",
        "pin": "true",
        "progress": "false",
        "wrap-with-directory": "false",
        "pin-name": "round 5.fsck",
    }
    assert str(seen["ctype"]).startswith("multipart/form-data; boundary=")
    assert seen["length"] == seen["body_len"]
    assert seen["files"] == {"file:round%205.fsck": bytearray(data)}


async def test_add_from_file_equals_local_cid(
    httpx_mock: HTTPXMock, kubo: KuboBackend, tmp_path: Path
) -> None:
    data = sample_bytes(600_000, "file")
    path = tmp_path / "ckpt.fsck"
    path.write_bytes(data)
    cid = cid_of_bytes(data, 0)
    httpx_mock.add_response(method="POST", content=b'{"Bytes":262144}\n' + add_line(cid, len(data)))
    stored = await kubo.add(path)
    assert stored.cid == cid


async def test_add_cid_mismatch_raises_and_removes_stray_pin(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    data = b"mismatch me"
    other = cid_of_bytes(b"something else", 0)
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/add?cid-version=0&raw-leaves=false&chunker=size-262144"
        "&hash=sha2-256&trickle=false&max-file-links=174&inline=false&pin=true&progress=false"
        "&wrap-with-directory=false",
        content=add_line(other, len(data)),
    )
    httpx_mock.add_response(
        method="POST", url=f"{API}/api/v0/pin/rm?arg={other}&recursive=true", json={"Pins": [other]}
    )
    with pytest.raises(CIDMismatchError) as info:
        await kubo.add(data)
    assert other in str(info.value) and cid_of_bytes(data, 0) in str(info.value)


async def test_add_without_hash_line_is_an_error(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    backend = KuboBackend(API, retry=RetryPolicy(attempts=1, sleep=sleeps))
    httpx_mock.add_response(method="POST", content=b"")
    with pytest.raises(UnavailableError, match="X-Stream-Error"):
        await backend.add(b"x")
    await backend.aclose()


# --------------------------------------------------------------------------- cat


async def test_cat_is_offline_by_default_and_streams(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    data = sample_bytes(3 * 1024 * 1024 + 5, "cat")
    cid = cid_of_bytes(data, 0)
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/cat?arg={cid}&offline=true",
        content=data,
        headers={"X-Content-Length": str(len(data)), "X-Stream-Output": "1"},
    )
    chunks = [c async for c in kubo.fetch(cid)]
    assert b"".join(chunks) == data


async def test_cat_with_fetch_timeout_uses_timeout_option(httpx_mock: HTTPXMock) -> None:
    backend = KuboBackend(API, fetch_timeout=12.5)
    cid = cid_of_bytes(b"net", 0)
    httpx_mock.add_response(
        method="POST", url=f"{API}/api/v0/cat?arg={cid}&timeout=12.5s", content=b"net"
    )
    assert b"".join([c async for c in backend.fetch(cid)]) == b"net"
    await backend.aclose()


async def test_cat_missing_block_is_not_found_without_retry(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    cid = cid_of_bytes(b"absent", 0)
    httpx_mock.add_response(
        method="POST",
        status_code=500,
        json=kubo_error(f"block was not found locally (offline): ipld: could not find {cid}"),
    )
    with pytest.raises(NotFoundError):
        async for _ in kubo.fetch(cid):
            pass
    assert sleeps.delays == []
    assert len(httpx_mock.get_requests()) == 1


async def test_cat_truncated_stream_resumes_with_offset(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    data = sample_bytes(2_000_000, "trunc")
    cid = cid_of_bytes(data, 0)
    cut = 1_234_567
    # First answer claims the full length but ends early (an X-Stream-Error case).
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/cat?arg={cid}&offline=true",
        content=data[:cut],
        headers={"X-Content-Length": str(len(data))},
    )
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/cat?arg={cid}&offline=true&offset={cut}",
        content=data[cut:],
        headers={"X-Content-Length": str(len(data) - cut)},
    )
    assert b"".join([c async for c in kubo.fetch(cid)]) == data


async def test_cat_truncated_for_good_fails_as_unavailable(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    cid = cid_of_bytes(b"0123456789", 0)
    httpx_mock.add_response(
        method="POST", content=b"", headers={"X-Content-Length": "10"}, is_reusable=True
    )
    with pytest.raises(UnavailableError, match="ended early"):
        async for _ in kubo.fetch(cid):
            pass


async def test_wrong_bytes_are_rejected_by_the_chain(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    data = b"the real checkpoint"
    cid = cid_of_bytes(data, 0)
    httpx_mock.add_response(method="POST", content=b"the fake checkpoint", is_reusable=True)
    chain = BackendChain([kubo])
    with pytest.raises(IntegrityError):
        await chain.fetch_bytes(cid)


async def test_truncated_bytes_are_rejected_by_the_chain(
    httpx_mock: HTTPXMock, kubo: KuboBackend, tmp_path: Path
) -> None:
    data = sample_bytes(500_000, "t")
    cid = cid_of_bytes(data, 0)
    # No length header: the backend cannot tell; the chain's verification must.
    httpx_mock.add_response(method="POST", content=data[:100_000])
    dest = tmp_path / "out.bin"
    with pytest.raises(IntegrityError):
        await BackendChain([kubo]).fetch_to_file(cid, dest)
    assert not dest.exists()


async def test_repeatedly_broken_stream_resumes_while_making_progress() -> None:
    fake = FakeKubo()
    sleeps = Sleeps()
    backend = KuboBackend(API, transport=fake, retry=RetryPolicy(attempts=2, sleep=sleeps))
    data = sample_bytes(500_000, "t")
    cid = (await backend.add(data)).cid
    fake.truncate = 100_000  # every answer stops after 100 kB
    assert await BackendChain([backend]).fetch_bytes(cid) == data
    offsets = [p.get("offset", "0") for path, p in fake.requests if path.endswith("/cat")]
    assert offsets == ["0", "100000", "200000", "300000", "400000"]
    await backend.aclose()


# --------------------------------------------------------------------------- pins, health


async def test_pin_add_rm_ls_shapes(httpx_mock: HTTPXMock, kubo: KuboBackend) -> None:
    cid = cid_of_bytes(b"pinned", 0)
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/pin/add?arg={cid}&recursive=true&progress=false&timeout=60s&name=r1",
        json={"Pins": [cid]},
    )
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/pin/ls?arg={cid}&type=recursive&offline=true",
        json={"Keys": {cid: {"Type": "recursive", "Name": "r1"}}},
    )
    httpx_mock.add_response(
        method="POST", url=f"{API}/api/v0/pin/rm?arg={cid}&recursive=true", json={"Pins": [cid]}
    )
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/pin/ls?arg={cid}&type=recursive&offline=true",
        status_code=500,
        json=kubo_error(f"path '{cid}' is not pinned"),
    )
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/pin/rm?arg={cid}&recursive=true",
        status_code=500,
        json=kubo_error("not pinned or pinned indirectly"),
    )
    assert (await kubo.pin(cid, name="r1")).cid == cid
    assert await kubo.has(cid) is True
    await kubo.unpin(cid)
    assert await kubo.has(cid) is False
    await kubo.unpin(cid)  # idempotent


async def test_pin_of_unobtainable_cid_is_not_found(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    cid = cid_of_bytes(b"nowhere", 0)
    httpx_mock.add_response(
        method="POST", status_code=500, json=kubo_error("context deadline exceeded")
    )
    with pytest.raises(NotFoundError):
        await kubo.pin(cid)


async def test_health_uses_version_and_id(httpx_mock: HTTPXMock, kubo: KuboBackend) -> None:
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/version",
        json={
            "Version": "0.32.1",
            "Commit": "",
            "Repo": "16",
            "System": "amd64/linux",
            "Golang": "go1.23",
        },
    )
    httpx_mock.add_response(
        method="POST",
        url=f"{API}/api/v0/id",
        json={
            "ID": "12D3KooWabcdef1234567890",
            "PublicKey": "x",
            "Addresses": [],
            "AgentVersion": "kubo/0.32.1/",
            "Protocols": [],
        },
    )
    health = await kubo.health()
    assert health.ok and health.version == "kubo 0.32.1"
    assert health.extra["peer_id"] == "12D3KooWabcdef1234567890"
    assert "ok (kubo 0.32.1)" in health.line()


async def test_health_unreachable_does_not_raise(httpx_mock: HTTPXMock, kubo: KuboBackend) -> None:
    httpx_mock.add_exception(httpx.ConnectError("Connection refused"))
    health = await kubo.health()
    assert health.reachable is False
    assert "could not connect" in health.detail


# ------------------------------------------------------------------ errors, retries, secrets


async def test_401_is_auth_error_not_retried_and_token_redacted(
    httpx_mock: HTTPXMock, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = KuboBackend(API, token=TOKEN, retry=RetryPolicy(sleep=sleeps))
    httpx_mock.add_response(method="POST", status_code=401, text=f"bad token {TOKEN}")
    with pytest.raises(AuthError) as info:
        await backend.has(cid_of_bytes(b"x", 0))
    assert sleeps.delays == []
    request = httpx_mock.get_requests()[0]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "FEDSTORE_KUBO_TOKEN" in str(info.value)
    for text in (str(info.value), repr(backend), caplog.text, repr(info.value)):
        assert TOKEN not in text
    await backend.aclose()


@pytest.mark.parametrize("bad", ["\n", "\r\nX-Injected: 1", "\x00", "\x7f", "é"])
def test_token_with_a_line_break_or_control_character_is_refused_unquoted(bad: str) -> None:
    """httpx/h11 would refuse the header later and quote it (token included) in the error
    and in httpcore's debug log: the backend refuses it at once, without the value."""
    secret = f"kubo-secret-part-one{bad}part-two"
    with pytest.raises(ConfigError) as info:
        KuboBackend(API, token=secret)
    assert "Authorization" in str(info.value) and "line break" in str(info.value)
    for text in (str(info.value), repr(info.value)):
        assert "kubo-secret-part-one" not in text and "part-two" not in text


async def test_non_json_answers_are_quoted_redacted(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    """A proxy in front of the daemon may echo the request (token included) in a 200 page."""
    backend = KuboBackend(API, token=TOKEN, retry=RetryPolicy(sleep=sleeps))
    page = f"<html>echo: Authorization: Bearer {TOKEN}</html>"
    httpx_mock.add_response(method="POST", text=page)
    httpx_mock.add_response(method="POST", text=page)
    with pytest.raises(BackendError, match="not JSON") as info:
        await backend.has(cid_of_bytes(b"x", 0))
    assert "echo: Authorization" in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(BackendError, match="non-JSON line") as info:
        await backend.add(b"data")
    assert TOKEN not in str(info.value)
    await backend.aclose()


async def test_429_retry_after_is_honoured(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    cid = cid_of_bytes(b"x", 0)
    httpx_mock.add_response(method="POST", status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(method="POST", json={"Keys": {cid: {"Type": "recursive"}}})
    assert await kubo.has(cid) is True
    assert len(sleeps.delays) == 1 and 7 <= sleeps.delays[0] < 7.5


async def test_non_kubo_500_is_retried_then_succeeds(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    cid = cid_of_bytes(b"x", 0)
    httpx_mock.add_response(method="POST", status_code=502, text="bad gateway")
    httpx_mock.add_response(method="POST", status_code=500, text="proxy exploded")
    httpx_mock.add_response(method="POST", json={"Keys": {cid: {"Type": "recursive"}}})
    assert await kubo.has(cid) is True
    assert len(sleeps.delays) == 2 and sleeps.delays[1] > 0


async def test_500_keeps_failing_gives_up_after_attempts(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_response(method="POST", status_code=503, text="down", is_reusable=True)
    with pytest.raises(UnavailableError, match="503"):
        await kubo.has(cid_of_bytes(b"x", 0))
    assert len(httpx_mock.get_requests()) == 3
    assert len(sleeps.delays) == 2


async def test_kubo_command_error_is_not_retried(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_response(method="POST", status_code=500, json=kubo_error("datastore is broken"))
    with pytest.raises(BackendError, match="datastore is broken") as info:
        await kubo.unpin(cid_of_bytes(b"x", 0))
    assert not isinstance(info.value, UnavailableError)
    assert sleeps.delays == []


async def test_kubo_rate_limited_code_is_retryable(
    httpx_mock: HTTPXMock, kubo: KuboBackend
) -> None:
    httpx_mock.add_response(
        method="POST", status_code=500, json=kubo_error("slow down", code=3), is_reusable=True
    )
    with pytest.raises(RateLimitedError):
        await kubo.has(cid_of_bytes(b"x", 0))
    assert len(httpx_mock.get_requests()) == 3


async def test_timeouts_are_retried_then_unavailable(
    httpx_mock: HTTPXMock, kubo: KuboBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), is_reusable=True)
    with pytest.raises(UnavailableError, match="timed out"):
        await kubo.has(cid_of_bytes(b"x", 0))
    assert len(sleeps.delays) == 2


async def test_wrong_endpoint_404_explains(httpx_mock: HTTPXMock, kubo: KuboBackend) -> None:
    httpx_mock.add_response(method="POST", status_code=404, text="404 page not found")
    with pytest.raises(BackendError, match="not a gateway"):
        await kubo.has(cid_of_bytes(b"x", 0))


async def test_hostile_cid_never_reaches_the_daemon(kubo: KuboBackend) -> None:
    from fedstore.errors import InvalidCIDError

    with pytest.raises(InvalidCIDError):
        await kubo.unpin("../../api/v0/shutdown")


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),
        ("/ip6/::1/tcp/5001", "http://[::1]:5001"),
        ("/dns4/ipfs.example.org/tcp/443/https", "https://ipfs.example.org:443"),
        ("/dns/node/tcp/5001/http", "http://node:5001"),
        ("http://10.0.0.2:5001/api/v0/", "http://10.0.0.2:5001"),
        ("https://kubo.example/prefix", "https://kubo.example/prefix"),
        ("localhost:5002", "http://localhost:5002"),
    ],
)
def test_api_address_spellings(text: str, url: str) -> None:
    assert api_url_from_text(text) == url


@pytest.mark.parametrize(
    "text",
    ["/unix/run/ipfs.sock", "/ip4/1.2.3.4/udp/5001", "/ip4/1.2.3.4", "ftp://x", "http://u:p@h:1"],
)
def test_bad_api_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        api_url_from_text(text)


@pytest.mark.parametrize(
    "text", ["ftp://user:tok-1618@h:1", "https://u:tok-1618@", "ws://h?t=tok-1618"]
)
def test_bad_api_address_is_shown_without_credentials(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        api_url_from_text(text)
    assert "Kubo API address" in str(info.value) and "tok-1618" not in str(info.value)


def test_api_discovery_order(tmp_path: Path) -> None:
    (tmp_path / "api").write_text("/ip4/127.0.0.9/tcp/5099")
    assert (
        api_url_from_env({"FEDSTORE_KUBO_API": "/ip4/10.1.1.1/tcp/1", "IPFS_PATH": str(tmp_path)})[
            0
        ]
        == "http://10.1.1.1:1"
    )
    assert api_url_from_env({"IPFS_PATH": str(tmp_path)}) == (
        "http://127.0.0.9:5099",
        str(tmp_path / "api"),
    )
    empty = tmp_path / "none"
    assert api_url_from_env({"IPFS_PATH": str(empty)}) == ("http://127.0.0.1:5001", "default")
    home = tmp_path / "home"
    (home / ".ipfs").mkdir(parents=True)
    (home / ".ipfs" / "api").write_text("/ip4/127.0.0.3/tcp/5003\n")
    assert api_url_from_env({"HOME": str(home)})[0] == "http://127.0.0.3:5003"


async def test_from_env_builds_backend_and_redacts(tmp_path: Path) -> None:
    backend = KuboBackend.create(
        {
            "FEDSTORE_KUBO_API": "/ip4/127.0.0.1/tcp/5001",
            "FEDSTORE_KUBO_TOKEN": TOKEN,
            "FEDSTORE_KUBO_FETCH_TIMEOUT": "30",
        },
        BackendContext(),
    )
    assert backend.api_url == "http://127.0.0.1:5001"
    assert backend.fetch_timeout == 30
    assert TOKEN not in repr(backend) and "auth=***" in repr(backend)
    await backend.aclose()
    await backend.aclose()
    with pytest.raises(NotConfiguredError):
        KuboBackend.create({"FEDSTORE_KUBO_API": "/unix/x"}, BackendContext())
    with pytest.raises(ConfigError, match="FEDSTORE_KUBO_PIN_TIMEOUT='soon' is not a number"):
        KuboBackend.create({"FEDSTORE_KUBO_PIN_TIMEOUT": "soon"}, BackendContext())
    for bad in ("nan", "-1", "inf"):
        with pytest.raises(ConfigError, match="FEDSTORE_KUBO_FETCH_TIMEOUT"):
            KuboBackend.create({"FEDSTORE_KUBO_FETCH_TIMEOUT": bad}, BackendContext())
    assert (
        KuboBackend.create({"FEDSTORE_KUBO_PIN_TIMEOUT": "30s"}, BackendContext()).pin_timeout == 30
    )


async def test_basic_auth_token(httpx_mock: HTTPXMock) -> None:
    import base64

    backend = KuboBackend(API, token="basic:alice:s3cretpass")
    httpx_mock.add_response(method="POST", json={"Keys": {}})
    await backend.has(cid_of_bytes(b"x", 0))
    expected = base64.b64encode(b"alice:s3cretpass").decode()
    assert httpx_mock.get_requests()[0].headers["authorization"] == f"Basic {expected}"
    await backend.aclose()


async def test_fake_kubo_down_maps_to_unavailable() -> None:
    fake = FakeKubo()
    fake.down = True
    backend = KuboBackend(API, transport=fake, retry=RetryPolicy(attempts=2, sleep=Sleeps()))
    with pytest.raises(UnavailableError, match="could not connect"):
        await backend.add(b"data")
    await backend.aclose()
