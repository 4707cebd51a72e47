"""Pinata backend: conformance (v3 CAR and file, TUS, legacy) on a fake Pinata; shapes via
pytest-httpx. CAR uploads in detail: tests/test_pinata_car.py."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest
from _doubles import Sleeps
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.backend import PROBE_BLOB
from fedstore_pinata.testing import FakePinata
from pytest_httpx import HTTPXMock

from fedstore.backends import BackendChain, BackendContext
from fedstore.backends.http import RetryPolicy, Secret
from fedstore.backends.streaming import read_multipart
from fedstore.backends.testing import BackendConformance, sample_bytes
from fedstore.errors import (
    AuthError,
    CIDMismatchError,
    ConfigError,
    IntegrityError,
    NotConfiguredError,
    NotFoundError,
    QuotaError,
    RateLimitedError,
    UnavailableError,
)
from fedstore.ipld.cid import cid_of_bytes

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmZWRzdG9yZS10ZXN0In0.c2lnbmF0dXJlLW9mLXRoZS1qd3Q"
GW_TOKEN = "gateway-token-abcdef0123456789"
API = "https://api.pinata.test"
UP = "https://uploads.pinata.test"
GW = "https://fedstore.mypinata.test"


def config(**overrides: object) -> PinataConfig:
    base: dict[str, object] = {
        "jwt": Secret(JWT),
        "api_url": API,
        "upload_url": UP,
        "gateway_url": GW,
        "gateway_token": Secret(GW_TOKEN),
    }
    base.update(overrides)
    return PinataConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def pinata(sleeps: Sleeps):  # type: ignore[no-untyped-def]
    backend = PinataBackend(config(), retry=RetryPolicy(attempts=3, sleep=sleeps))
    yield backend
    await backend.aclose()


def upload_answer(
    cid: str, size: int, file_id: str = "0190f3c2-aaaa-bbbb-cccc-1234567890ab"
) -> dict[str, object]:
    return {
        "data": {
            "id": file_id,
            "name": "checkpoint",
            "cid": cid,
            "size": size,
            "number_of_files": 1,
            "mime_type": "application/octet-stream",
            "group_id": None,
            "keyvalues": {},
            "created_at": "2025-01-01T00:00:00Z",
            "network": "public",
        }
    }


async def parse_form(request: httpx.Request) -> tuple[dict[str, str], dict[str, bytes]]:
    body = await request.aread()
    boundary = request.headers["content-type"].split("boundary=")[1]
    fields: dict[str, str] = {}
    files: dict[str, bytearray] = {}

    async def on_field(name: str, value: str) -> None:
        fields[name] = value

    async def on_file(name: str, filename: str, chunk: bytes) -> None:
        files.setdefault(f"{name}:{filename}", bytearray()).extend(chunk)

    await read_multipart([body], boundary, on_field=on_field, on_file=on_file)
    assert int(request.headers["content-length"]) == len(body)
    return fields, {k: bytes(v) for k, v in files.items()}


# --------------------------------------------------------------------------- conformance


def _fake_backend(fake: FakePinata, **cfg: object) -> PinataBackend:
    return PinataBackend(config(**cfg), transport=fake, retry=RetryPolicy(sleep=Sleeps()))


class TestPinataV3Conformance(BackendConformance):
    @pytest.fixture
    async def backend(self):  # type: ignore[no-untyped-def,override]
        b = _fake_backend(FakePinata(jwt=JWT, gateway_token=GW_TOKEN))
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self):  # type: ignore[no-untyped-def,override]
        return lambda: _fake_backend(FakePinata(jwt=JWT, gateway_token=GW_TOKEN))


class TestPinataV3FileConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):  # type: ignore[no-untyped-def,override]
        b = _fake_backend(FakePinata(jwt=JWT, gateway_token=GW_TOKEN), upload_format="file")
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self):  # type: ignore[no-untyped-def,override]
        fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN)
        return lambda: _fake_backend(fake, upload_format="file")


class TestPinataTusConformance(BackendConformance):
    @pytest.fixture
    async def backend(self, tmp_path: Path):  # type: ignore[no-untyped-def,override]
        fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN, blob_dir=tmp_path)
        b = _fake_backend(fake, tus_threshold=50_000, tus_chunk=65536)
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self, tmp_path: Path):  # type: ignore[no-untyped-def,override]
        fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN, blob_dir=tmp_path)
        return lambda: _fake_backend(fake, tus_threshold=1000, tus_chunk=1024)


class TestPinataLegacyConformance(BackendConformance):
    @pytest.fixture
    async def backend(self):  # type: ignore[no-untyped-def,override]
        fake = FakePinata(jwt=None, api_key="legacy-key-123", api_secret="legacy-secret-456")
        b = _fake_backend(
            fake,
            jwt=None,
            api_key=Secret("legacy-key-123"),
            api_secret=Secret("legacy-secret-456"),
            mode="legacy",
            gateway_token=None,
        )
        yield b
        await b.aclose()

    @pytest.fixture
    def new_backend(self):  # type: ignore[no-untyped-def,override]
        fake = FakePinata(jwt=None, api_key="legacy-key-123", api_secret="legacy-secret-456")
        return lambda: _fake_backend(
            fake,
            jwt=None,
            api_key=Secret("legacy-key-123"),
            api_secret=Secret("legacy-secret-456"),
            mode="legacy",
            gateway_token=None,
        )


# --------------------------------------------------------------------------- v3 upload


@pytest.mark.parametrize("version", [0, 1])
async def test_v3_file_upload_shape(httpx_mock: HTTPXMock, sleeps: Sleeps, version: int) -> None:
    """PINATA_UPLOAD_FORMAT=file: the raw file with cid_version (no car field)."""
    pinata = PinataBackend(config(upload_format="file"), retry=RetryPolicy(sleep=sleeps))
    data = sample_bytes(400_000, "v3")
    cid = cid_of_bytes(data, version)
    captured: dict[str, object] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        captured["auth"] = request.headers.get("authorization")
        captured["form"] = await parse_form(request)
        return httpx.Response(200, json=upload_answer(cid, len(data)))

    httpx_mock.add_callback(handler, method="POST", url=f"{UP}/v3/files")
    labels = {"round": "5", "peer": "12D3KooWpeer", "model": "digits-mlp"}
    stored = await pinata.add(data, cid_version=version, name="round_5.fsck", labels=labels)
    assert stored.cid == cid and stored.size == len(data)
    assert stored.backend_ref == "0190f3c2-aaaa-bbbb-cccc-1234567890ab"
    assert captured["auth"] == f"Bearer {JWT}"
    fields, files = captured["form"]  # type: ignore[misc]
    assert fields == {
        "network": "public",
        "name": "round_5.fsck",
        "cid_version": f"v{version}",
        "keyvalues": json.dumps(labels),
    }
    assert files == {"file:round_5.fsck": data}
    await pinata.aclose()


async def test_v3_upload_with_group(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    backend = PinataBackend(config(group_id="grp-1"), retry=RetryPolicy(sleep=sleeps))
    data = b"grouped"
    seen: dict[str, str] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.update((await parse_form(request))[0])
        return httpx.Response(200, json=upload_answer(cid_of_bytes(data, 0), len(data)))

    httpx_mock.add_callback(handler, method="POST", url=f"{UP}/v3/files")
    await backend.add(data)
    assert seen["group_id"] == "grp-1"
    await backend.aclose()


async def test_v3_cid_mismatch_deletes_stray_upload(
    httpx_mock: HTTPXMock, pinata: PinataBackend
) -> None:
    data = b"my checkpoint"
    theirs = cid_of_bytes(data, 1)  # another root block than fedstore's v0 one
    httpx_mock.add_response(
        method="POST", url=f"{UP}/v3/files", json=upload_answer(theirs, len(data), "stray-id")
    )
    httpx_mock.add_response(
        method="DELETE", url=f"{API}/v3/files/public/stray-id", json={"data": None}
    )
    with pytest.raises(CIDMismatchError) as info:
        await pinata.add(data, cid_version=0)
    assert theirs in str(info.value) and cid_of_bytes(data, 0) in str(info.value)


async def test_mismatch_through_fake_service() -> None:
    fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN)
    fake.cid_override = cid_of_bytes(b"elsewhere", 1)
    backend = _fake_backend(fake)
    with pytest.raises(CIDMismatchError):
        await backend.add(b"payload")
    assert fake.files == {}  # stray upload deleted
    await backend.aclose()


# --------------------------------------------------------------------------- TUS


async def test_tus_upload_shape_and_resume(tmp_path: Path) -> None:
    fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN)
    sleeps = Sleeps()
    backend = PinataBackend(
        config(tus_threshold=100_000, tus_chunk=100_000),
        transport=fake,
        retry=RetryPolicy(attempts=3, sleep=sleeps),
    )
    data = sample_bytes(350_000, "tus")
    path = tmp_path / "big.fsck"
    path.write_bytes(data)
    fake.drop_patch_after = 50_001  # break the first chunk after 50001 bytes
    stored = await backend.add(path, cid_version=1, name="big.fsck", labels={"round": "9"})
    assert stored.cid == cid_of_bytes(data, 1)
    assert stored.backend_ref in fake.files
    tus = [
        (r.method, r.headers.get("upload-offset"), r.headers.get("content-length"))
        for r in fake.requests
        if r.url.path.startswith("/v3/files") and r.method != "GET"
    ]
    create = fake.requests[0]
    assert (create.method, create.url.path) == ("POST", "/v3/files")
    assert create.headers["upload-length"] == str(len(data))
    assert create.headers["tus-resumable"] == "1.0.0"
    meta = dict(pair.split(" ") for pair in create.headers["upload-metadata"].split(","))
    decoded = {k: base64.b64decode(v).decode() for k, v in meta.items()}
    assert decoded == {
        "filename": "big.fsck",
        "filetype": "application/octet-stream",
        "network": "public",
        "cid_version": "v1",
        "keyvalues": '{"round": "9"}',
    }
    # chunk at 0 breaks after 50001 bytes; HEAD asks the offset; upload resumes from it
    assert tus[1:] == [
        ("PATCH", "0", "100000"),
        ("HEAD", None, None),
        ("PATCH", "50001", "100000"),
        ("PATCH", "150001", "100000"),
        ("PATCH", "250001", "99999"),
    ]
    patch = next(r for r in fake.requests if r.method == "PATCH")
    assert patch.headers["content-type"] == "application/offset+octet-stream"
    assert len(sleeps.delays) == 1
    # read back through the gateway, verified by the chain
    assert await BackendChain([backend]).fetch_bytes(stored.cid) == data
    await backend.aclose()


async def test_tus_exact_requests(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    backend = PinataBackend(
        config(tus_threshold=10, tus_chunk=1024), retry=RetryPolicy(sleep=sleeps)
    )
    data = sample_bytes(2500, "tus-exact")
    cid = cid_of_bytes(data, 0)
    loc = f"{UP}/v3/files/abc123"
    httpx_mock.add_response(
        method="POST", url=f"{UP}/v3/files", status_code=201, headers={"Location": loc}
    )
    for start, end in [(0, 1024), (1024, 2048), (2048, 2500)]:
        headers = {"Upload-Offset": str(end)}
        if end == 2500:
            headers["upload-cid"] = cid
        httpx_mock.add_response(
            method="PATCH",
            url=loc,
            status_code=204,
            headers=headers,
            match_headers={"Upload-Offset": str(start), "Content-Length": str(end - start)},
        )
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=100&cid={cid}",
        json={"data": {"files": [{"id": "file-9", "cid": cid}], "next_page_token": ""}},
    )
    stored = await backend.add(data)
    assert (stored.cid, stored.backend_ref) == (cid, "file-9")
    bodies = [r.content for r in httpx_mock.get_requests(method="PATCH")]
    assert b"".join(bodies) == data
    await backend.aclose()


# --------------------------------------------------------------------------- legacy


async def test_legacy_pin_file_to_ipfs_shape(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    cfg = config(
        jwt=None, api_key=Secret("key-1234"), api_secret=Secret("secret-5678"), mode="legacy"
    )
    backend = PinataBackend(cfg, retry=RetryPolicy(sleep=sleeps))
    data = b"legacy checkpoint bytes"
    cid = cid_of_bytes(data, 1)
    captured: dict[str, object] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        captured["headers"] = request.headers
        captured["form"] = await parse_form(request)
        return httpx.Response(
            200, json={"IpfsHash": cid, "PinSize": len(data), "Timestamp": "2025-01-01T00:00:00Z"}
        )

    httpx_mock.add_callback(handler, method="POST", url=f"{API}/pinning/pinFileToIPFS")
    stored = await backend.add(data, cid_version=1, name="r1.fsck", labels={"round": "1"})
    assert stored.cid == cid and stored.backend_ref is None
    headers = captured["headers"]
    assert headers["pinata_api_key"] == "key-1234"  # type: ignore[index]
    assert headers["pinata_secret_api_key"] == "secret-5678"  # type: ignore[index]
    assert "authorization" not in headers  # type: ignore[operator]
    fields, files = captured["form"]  # type: ignore[misc]
    assert json.loads(fields["pinataOptions"]) == {"cidVersion": 1, "wrapWithDirectory": False}
    assert json.loads(fields["pinataMetadata"]) == {"name": "r1.fsck", "keyvalues": {"round": "1"}}
    assert files == {"file:r1.fsck": data}
    await backend.aclose()


async def test_legacy_unpin_not_pinned_is_ok(httpx_mock: HTTPXMock, sleeps: Sleeps) -> None:
    cfg = config(mode="legacy")
    backend = PinataBackend(cfg, retry=RetryPolicy(sleep=sleeps))
    cid = cid_of_bytes(b"gone", 0)
    httpx_mock.add_response(
        method="DELETE",
        url=f"{API}/pinning/unpin/{cid}",
        status_code=400,
        json={"error": {"reason": "CURRENT_USER_HAS_NOT_PINNED_CID", "details": "not pinned"}},
    )
    await backend.unpin(cid)
    await backend.aclose()


# --------------------------------------------------------------------------- list, delete, pin


async def test_list_follows_next_page_token(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=2",
        json={
            "data": {
                "files": [{"id": "a", "cid": "c1"}, {"id": "b", "cid": "c2"}],
                "next_page_token": "tok1",
            }
        },
    )
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=2&pageToken=tok1",
        json={"data": {"files": [{"id": "c", "cid": "c3"}], "next_page_token": ""}},
    )
    ids = [f["id"] async for f in pinata.list_files(page_size=2)]
    assert ids == ["a", "b", "c"]


async def test_list_stops_on_repeated_token(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    page = {"data": {"files": [{"id": "a", "cid": "c1"}], "next_page_token": "same"}}
    httpx_mock.add_response(method="GET", json=page, is_reusable=True)
    ids = [f["id"] async for f in pinata.list_files(page_size=1)]
    assert ids == ["a", "a"]
    assert len(httpx_mock.get_requests()) == 2


async def test_unpin_by_ref_and_by_cid(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    cid = cid_of_bytes(b"del", 0)
    httpx_mock.add_response(method="DELETE", url=f"{API}/v3/files/public/id-1", json={"data": None})
    await pinata.unpin(cid, backend_ref="id-1")
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=100&cid={cid}",
        json={
            "data": {
                "files": [{"id": "id-2", "cid": cid}, {"id": "id-3", "cid": cid}],
                "next_page_token": "",
            }
        },
    )
    httpx_mock.add_response(
        method="DELETE", url=f"{API}/v3/files/public/id-2", status_code=404, text="not found"
    )
    httpx_mock.add_response(method="DELETE", url=f"{API}/v3/files/public/id-3", json={"data": None})
    await pinata.unpin(cid)
    with pytest.raises(Exception, match="not a Pinata file id"):
        await pinata.unpin(cid, backend_ref="../../admin")


async def test_pin_by_cid_request(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    cid = cid_of_bytes(b"elsewhere", 1)
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=100&cid={cid}",
        json={"data": {"files": [], "next_page_token": ""}},
    )
    captured: dict[str, object] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        captured.update(json.loads(await request.aread()))
        return httpx.Response(
            200, json={"data": {"id": "req-1", "cid": cid, "status": "prechecking"}}
        )

    httpx_mock.add_callback(handler, method="POST", url=f"{API}/v3/files/public/pin_by_cid")
    stored = await pinata.pin(cid, name="r3", labels={"round": "3"})
    assert stored.cid == cid
    assert captured == {"cid": cid, "name": "r3", "keyvalues": {"round": "3"}}


# --------------------------------------------------------------------------- gateway


async def test_gateway_download_sends_token_not_jwt(
    httpx_mock: HTTPXMock, pinata: PinataBackend
) -> None:
    data = sample_bytes(100_000, "gw")
    cid = cid_of_bytes(data, 0)
    httpx_mock.add_response(method="GET", url=f"{GW}/ipfs/{cid}", content=data)
    assert b"".join([c async for c in pinata.fetch(cid)]) == data
    request = httpx_mock.get_requests()[0]
    assert request.headers["x-pinata-gateway-token"] == GW_TOKEN
    assert "authorization" not in request.headers


class BreakingGateway(httpx.AsyncBaseTransport):
    """Serves *data*; the first answer stops after *cut* bytes although it promised all."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) == 1:
            return httpx.Response(
                200, content=self.data[: self.cut], headers={"Content-Length": str(len(self.data))}
            )
        start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(206, content=self.data[start:])


async def test_gateway_resumes_with_range() -> None:
    data = sample_bytes(300_000, "range")
    cid = cid_of_bytes(data, 0)
    transport = BreakingGateway(data, 120_000)
    backend = PinataBackend(config(), transport=transport, retry=RetryPolicy(sleep=Sleeps()))
    assert await BackendChain([backend]).fetch_bytes(cid) == data
    first, second = transport.requests
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=120000-"
    assert second.headers["x-pinata-gateway-token"] == GW_TOKEN
    await backend.aclose()


async def test_gateway_wrong_bytes_rejected_by_chain(
    httpx_mock: HTTPXMock, pinata: PinataBackend
) -> None:
    cid = cid_of_bytes(b"genuine", 0)
    httpx_mock.add_response(method="GET", url=f"{GW}/ipfs/{cid}", content=b"forged!")
    with pytest.raises(IntegrityError):
        await BackendChain([pinata]).fetch_bytes(cid)


async def test_gateway_missing_is_not_found(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    cid = cid_of_bytes(b"absent", 0)
    httpx_mock.add_response(method="GET", status_code=404, text="Not Found")
    with pytest.raises(NotFoundError):
        async for _ in pinata.fetch(cid):
            pass
    assert sleeps.delays == []


async def test_gateway_bad_token_is_actionable(
    httpx_mock: HTTPXMock, pinata: PinataBackend
) -> None:
    httpx_mock.add_response(method="GET", status_code=401, json={"error": "invalid token"})
    with pytest.raises(AuthError, match="PINATA_GATEWAY_TOKEN") as info:
        async for _ in pinata.fetch(cid_of_bytes(b"x", 0)):
            pass
    assert GW_TOKEN not in str(info.value)


async def test_no_gateway_means_not_configured() -> None:
    backend = PinataBackend(config(gateway_url=None, gateway_token=None))
    with pytest.raises(NotConfiguredError, match="PINATA_GATEWAY_URL"):
        async for _ in backend.fetch(cid_of_bytes(b"x", 0)):
            pass
    await backend.aclose()


# --------------------------------------------------------------------------- errors and secrets


async def test_401_message_names_the_setting_and_hides_the_jwt(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    httpx_mock.add_response(
        method="POST",
        url=f"{UP}/v3/files",
        status_code=401,
        json={
            "error": {
                "reason": "INVALID_CREDENTIALS",
                "details": f"Invalid/expired credentials: {JWT}",
            }
        },
    )
    with pytest.raises(AuthError) as info:
        await pinata.add(b"x")
    text = str(info.value)
    assert text.startswith("Pinata rejected the JWT (401 INVALID_CREDENTIALS)")
    assert "check PINATA_JWT" in text
    assert sleeps.delays == []
    for part in JWT.split("."):
        for shown in (text, repr(info.value), repr(pinata), caplog.text, repr(pinata.config)):
            assert part not in shown


async def test_403_no_scopes(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_response(
        method="GET",
        status_code=403,
        json={"error": {"reason": "NO_SCOPES_FOUND", "details": "no scopes"}},
    )
    with pytest.raises(AuthError, match="org:files:read"):
        await pinata.has(cid_of_bytes(b"x", 0))


async def test_quota_is_quota_error_not_retried(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_response(
        method="POST",
        url=f"{UP}/v3/files",
        status_code=403,
        json={"error": {"reason": "PLAN_LIMIT_EXCEEDED", "details": "storage limit reached"}},
    )
    with pytest.raises(QuotaError, match="plan"):
        await pinata.add(b"x")
    assert sleeps.delays == []


async def test_429_retry_after_honoured(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    data = b"rate limited"
    httpx_mock.add_response(
        method="POST", url=f"{UP}/v3/files", status_code=429, headers={"Retry-After": "3"}
    )
    httpx_mock.add_response(
        method="POST", url=f"{UP}/v3/files", json=upload_answer(cid_of_bytes(data, 0), len(data))
    )
    assert (await pinata.add(data)).cid == cid_of_bytes(data, 0)
    assert len(sleeps.delays) == 1 and 3 <= sleeps.delays[0] < 3.5
    # The whole body was sent again on the retry.
    bodies = [r.content for r in httpx_mock.get_requests()]
    assert bodies[0] == bodies[1] or len(bodies[1]) > len(data)


async def test_429_with_huge_retry_after_gives_up_at_once(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_response(method="GET", status_code=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimitedError) as info:
        await pinata.has(cid_of_bytes(b"x", 0))
    assert info.value.retry_after == 3600
    assert sleeps.delays == []


async def test_500_retried_then_success(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    cid = cid_of_bytes(b"x", 0)
    httpx_mock.add_response(method="GET", status_code=500, text="Internal Server Error")
    httpx_mock.add_response(
        method="GET", json={"data": {"files": [{"id": "i", "cid": cid}], "next_page_token": ""}}
    )
    assert await pinata.has(cid) is True
    assert len(sleeps.delays) == 1


async def test_503_keeps_failing(
    httpx_mock: HTTPXMock, pinata: PinataBackend, sleeps: Sleeps
) -> None:
    httpx_mock.add_response(method="POST", status_code=503, text="maintenance", is_reusable=True)
    with pytest.raises(UnavailableError, match="503"):
        await pinata.add(b"x")
    assert len(httpx_mock.get_requests()) == 3 and len(sleeps.delays) == 2
    assert sleeps.delays[1] > sleeps.delays[0] * 0.4


async def test_timeout_is_unavailable(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_exception(httpx.ConnectTimeout("connect timed out"), is_reusable=True)
    with pytest.raises(UnavailableError, match="timed out"):
        await pinata.has(cid_of_bytes(b"x", 0))


# --------------------------------------------------------------------------- health, config


async def test_health_probes_read_capability(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_response(
        method="GET",
        url=f"{API}/v3/files/public?limit=1",
        json={"data": {"files": [], "next_page_token": ""}},
    )
    health = await pinata.health()
    assert health.ok and health.authenticated is True
    assert "read ok" in health.detail and GW in health.detail


async def test_health_bad_key(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_response(
        method="GET", status_code=403, json={"error": {"reason": "API_KEY_REVOKED"}}
    )
    health = await pinata.health()
    assert health.reachable and health.authenticated is False
    assert "revoked" in health.detail and "auth failed" in health.line()


async def test_health_unreachable(httpx_mock: HTTPXMock, pinata: PinataBackend) -> None:
    httpx_mock.add_exception(httpx.ConnectError("Name or service not known"))
    health = await pinata.health()
    assert health.reachable is False


async def test_deep_health_uploads_reads_and_deletes_probe() -> None:
    fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN)
    backend = _fake_backend(fake)
    health = await backend.health(deep=True)
    assert health.ok, health.detail
    assert "upload ok" in health.detail and "gateway read ok" in health.detail
    assert fake.files == {}
    assert any(r.url.path == f"/ipfs/{cid_of_bytes(PROBE_BLOB, 1)}" for r in fake.requests)
    await backend.aclose()


def test_from_env() -> None:
    with pytest.raises(NotConfiguredError, match="PINATA_JWT"):
        PinataBackend.create({}, BackendContext())
    with pytest.raises(NotConfiguredError, match="PINATA_JWT"):
        PinataBackend.create(
            {"PINATA_API_KEY": "k", "PINATA_API_SECRET": "s", "PINATA_MODE": "v3"}, BackendContext()
        )
    cfg = PinataConfig.from_env(
        {
            "PINATA_JWT": JWT,
            "PINATA_API_URL": "http://127.0.0.1:9999/v3/",
            "PINATA_UPLOAD_URL": "127.0.0.1:9998",
            "PINATA_GATEWAY_URL": "fedstore.mypinata.cloud",
            "PINATA_GATEWAY_TOKEN": GW_TOKEN,
            "PINATA_RATE_LIMIT": "250",
        }
    )
    assert cfg.mode == "v3" and cfg.api_url == "http://127.0.0.1:9999"
    assert cfg.upload_url == "https://127.0.0.1:9998"
    assert cfg.gateway_url == "https://fedstore.mypinata.cloud"
    assert cfg.rate_limit == 250
    assert cfg.upload_format == "car"  # the default
    assert (
        PinataConfig.from_env({"PINATA_JWT": JWT, "PINATA_UPLOAD_FORMAT": " File "}).upload_format
        == "file"
    )
    with pytest.raises(NotConfiguredError, match="PINATA_UPLOAD_FORMAT must be car or file"):
        PinataConfig.from_env({"PINATA_JWT": JWT, "PINATA_UPLOAD_FORMAT": "tar"})
    assert JWT not in repr(cfg) and GW_TOKEN not in repr(cfg)
    legacy = PinataConfig.from_env({"PINATA_API_KEY": "k", "PINATA_API_SECRET": "s"})
    assert legacy.mode == "legacy" and legacy.rate_limit == 60
    with pytest.raises(NotConfiguredError):
        PinataConfig.from_env({"PINATA_JWT": JWT, "PINATA_API_URL": "https://user:pw@host"})


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:gw-secret-4711@gw.example",
        "https://user:gw-secret-4711@",
        "ws://h?token=gw-secret-4711",
    ],
)
def test_bad_url_setting_is_named_without_its_credentials(url: str) -> None:
    with pytest.raises(NotConfiguredError) as info:
        PinataConfig.from_env({"PINATA_JWT": JWT, "PINATA_GATEWAY_URL": url})
    assert "PINATA_GATEWAY_URL" in str(info.value)
    assert "gw-secret-4711" not in str(info.value)


@pytest.mark.parametrize("setting", ["PINATA_JWT", "PINATA_GATEWAY_TOKEN"])
def test_credential_with_a_line_break_is_refused_unquoted(setting: str) -> None:
    """httpx would refuse the header later and quote it (the credential) in its error."""
    env = {"PINATA_JWT": JWT, "PINATA_GATEWAY_URL": GW, setting: "cred-part-one\ncred-part-two"}
    with pytest.raises(ConfigError) as info:
        PinataBackend.create(env, BackendContext())
    assert "line break" in str(info.value)
    assert "cred-part-one" not in str(info.value) and "cred-part-two" not in str(info.value)


async def test_client_side_rate_limit_waits() -> None:
    from fedstore.backends.http import RateLimiter

    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    fake = FakePinata(jwt=JWT, gateway_token=GW_TOKEN)
    limiter = RateLimiter(2, clock=lambda: now[0], sleep=sleep)
    backend = PinataBackend(config(), transport=fake, limiter=limiter)
    for _ in range(3):
        await backend.has(cid_of_bytes(b"x", 0))
    assert len(waits) == 1 and waits[0] == pytest.approx(30.0)  # 2/min: third waits 30 s
    assert len(fake.requests) == 3
    await backend.aclose()
