"""Pinata v3 uploads as a locally built CAR (``car=true``): request shape, CID check,
the fake's CAR import, streaming and memory."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import httpx
import pytest
from _doubles import Sleeps
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.car_upload import CarPlan, car_length, iter_car_async, plan_car
from fedstore_pinata.testing import FakePinata
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock

import fedstore.ipld.car
from fedstore.backends import BackendChain
from fedstore.backends.http import RetryPolicy, Secret
from fedstore.backends.streaming import read_multipart
from fedstore.backends.testing import sample_bytes
from fedstore.errors import CIDMismatchError, IntegrityError, UnavailableError
from fedstore.ipld.car import CarReader, iter_car, read_car_verified
from fedstore.ipld.cid import CidBuilder, DagParams, cid_of_bytes, cid_of_file, parse_cid

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmZWRzdG9yZS1jYXIifQ.c2lnbmF0dXJlLWNhcg"
API = "https://api.pinata.test"
UP = "https://uploads.pinata.test"
GW = "https://fedstore.mypinata.test"
FILE_ID = "0190f3c2-aaaa-bbbb-cccc-1234567890ab"


def config(**overrides: object) -> PinataConfig:
    base: dict[str, object] = {"jwt": Secret(JWT), "api_url": API, "upload_url": UP}
    base.update(overrides)
    return PinataConfig(**base)  # type: ignore[arg-type]


def backend(transport: httpx.AsyncBaseTransport | None = None, **cfg: object) -> PinataBackend:
    return PinataBackend(config(**cfg), transport=transport, retry=RetryPolicy(sleep=Sleeps()))


def answer(cid: str) -> dict[str, object]:
    return {"data": {"id": FILE_ID, "cid": cid, "network": "public", "size": 1}}


class Form:
    """A parsed multipart request: text fields, file parts, the raw body."""

    def __init__(self, body: bytes, fields: dict[str, str], files: dict[str, bytes]) -> None:
        self.body, self.fields, self.files = body, fields, files

    @classmethod
    async def of(cls, request: httpx.Request) -> Form:
        body = await request.aread()
        assert int(request.headers["content-length"]) == len(body)
        boundary = request.headers["content-type"].split("boundary=")[1]
        fields: dict[str, str] = {}
        files: dict[str, bytearray] = {}

        async def on_field(name: str, value: str) -> None:
            fields[name] = value

        async def on_file(name: str, filename: str, chunk: bytes) -> None:
            files.setdefault(f"{name}:{filename}", bytearray()).extend(chunk)

        await read_multipart([body], boundary, on_field=on_field, on_file=on_file)
        return cls(body, fields, {k: bytes(v) for k, v in files.items()})


# --------------------------------------------------------------------------- request shape


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("size", [0, 5_000, 700_000])
@pytest.mark.parametrize("as_file", [False, True])
async def test_car_upload_shape(
    httpx_mock: HTTPXMock, tmp_path: Path, version: int, size: int, as_file: bool
) -> None:
    data = sample_bytes(size, f"car-{size}")
    cid = cid_of_bytes(data, version)
    source: bytes | Path = data
    if as_file:
        source = tmp_path / "round_5.fsck"
        source.write_bytes(data)
    forms: list[Form] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {JWT}"
        forms.append(await Form.of(request))
        return httpx.Response(200, json=answer(cid))

    httpx_mock.add_callback(handler, method="POST", url=f"{UP}/v3/files")
    labels = {"round": "5", "peer": "12D3KooWpeer"}
    pinata = backend(group_id="grp-7")
    stored = await pinata.add(source, cid_version=version, name="round_5.fsck", labels=labels)
    await pinata.aclose()
    assert (stored.cid, stored.size, stored.backend_ref) == (cid, size, FILE_ID)
    (form,) = forms
    assert form.fields == {
        "network": "public",
        "name": "round_5.fsck",
        "car": "true",
        "keyvalues": json.dumps(labels),
        "group_id": "grp-7",
    }
    assert list(form.files) == ["file:round_5.fsck.car"]
    assert (
        b'name="file"; filename="round_5.fsck.car"\r\nContent-Type: application/vnd.ipld.car\r\n'
        in form.body
    )
    car = form.files["file:round_5.fsck.car"]
    root = CarReader(io.BytesIO(car)).root
    assert root == parse_cid(cid) and str(root) == cid
    assert read_car_verified(car, expected_root=cid) == data
    # byte for byte what `fedstore car` / `ipfs dag export` writes
    assert car == b"".join(iter_car(data, DagParams.kubo(version)))


async def test_car_upload_is_resent_whole_on_retry(httpx_mock: HTTPXMock) -> None:
    data = sample_bytes(600_000, "retry")
    cid = cid_of_bytes(data, 1)
    httpx_mock.add_response(method="POST", url=f"{UP}/v3/files", status_code=503)
    httpx_mock.add_response(method="POST", url=f"{UP}/v3/files", json=answer(cid))
    pinata = backend()
    assert (await pinata.add(data, cid_version=1)).cid == cid
    await pinata.aclose()
    first, second = [await Form.of(r) for r in httpx_mock.get_requests()]
    assert first.files == second.files
    assert read_car_verified(first.files["file:checkpoint.car"], expected_root=cid) == data


async def test_file_format_sends_the_file_with_cid_version(httpx_mock: HTTPXMock) -> None:
    data = sample_bytes(300_000, "file-mode")
    cid = cid_of_bytes(data, 0)
    forms: list[Form] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        forms.append(await Form.of(request))
        return httpx.Response(200, json=answer(cid))

    httpx_mock.add_callback(handler, method="POST", url=f"{UP}/v3/files")
    pinata = backend(upload_format="file")
    assert (await pinata.add(data, name="r.fsck")).cid == cid
    await pinata.aclose()
    (form,) = forms
    assert "car" not in form.fields and form.fields["cid_version"] == "v0"
    assert form.files == {"file:r.fsck": data}


async def test_tus_and_legacy_still_send_the_file() -> None:
    """car=true is undocumented for TUS and the legacy API: they keep the file upload.

    (The fake stores what it receives: a CAR sent as a file would get another CID.)
    """
    data = sample_bytes(120_000, "big")
    fake = FakePinata(jwt=JWT)
    tus = backend(fake, tus_threshold=100_000, tus_chunk=65536)
    assert (await tus.add(data, cid_version=1)).cid == cid_of_bytes(data, 1)
    await tus.aclose()
    assert [r.method for r in fake.requests[:3]] == ["POST", "PATCH", "PATCH"]
    assert fake.requests[0].headers["upload-length"] == str(len(data))
    assert fake.blobs[cid_of_bytes(data, 1)] == data

    legacy_fake = FakePinata(jwt=JWT)
    legacy = backend(legacy_fake, mode="legacy")
    assert (await legacy.add(data)).cid == cid_of_bytes(data, 0)
    await legacy.aclose()
    assert [r.url.path for r in legacy_fake.requests] == ["/pinning/pinFileToIPFS"]
    assert legacy_fake.blobs[cid_of_bytes(data, 0)] == data


# --------------------------------------------------------------------------- CID check


@pytest.mark.parametrize("version", [0, 1])
async def test_other_root_is_mismatch_and_stray_upload_deleted(
    httpx_mock: HTTPXMock, version: int
) -> None:
    data = sample_bytes(700_000, "mismatch")
    # the root a 1 MiB chunker would give: another DAG of the same bytes
    theirs = cid_of_bytes(data, params=DagParams(version, chunk_size=1 << 20))
    httpx_mock.add_response(method="POST", url=f"{UP}/v3/files", json=answer(theirs))
    httpx_mock.add_response(
        method="DELETE", url=f"{API}/v3/files/public/{FILE_ID}", json={"data": None}
    )
    pinata = backend()
    with pytest.raises(CIDMismatchError) as info:
        await pinata.add(data, cid_version=version)
    await pinata.aclose()
    assert theirs in str(info.value) and cid_of_bytes(data, version) in str(info.value)
    assert [r.method for r in httpx_mock.get_requests()] == ["POST", "DELETE"]


async def test_v1_spelling_of_the_v0_root_is_the_same_root(httpx_mock: HTTPXMock) -> None:
    data = sample_bytes(700_000, "spelling")
    ours = cid_of_bytes(data, 0)
    v1 = str(parse_cid(ours).to_v1())
    assert v1.startswith("bafy")
    httpx_mock.add_response(method="POST", url=f"{UP}/v3/files", json=answer(v1))
    pinata = backend()
    stored = await pinata.add(data, cid_version=0)
    await pinata.aclose()
    assert stored.cid == ours  # fedstore records its own spelling


# --------------------------------------------------------------------------- CAR length and stream


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.lists(st.integers(0, 3), max_size=40),
    tail=st.integers(0, 20),
    chunk=st.integers(1, 24),
    links=st.integers(2, 5),
    version=st.integers(0, 1),
)
def test_car_length_matches_the_writer(
    pattern: list[int], tail: int, chunk: int, links: int, version: int
) -> None:
    """Repeated blocks (deduplicated in the CAR) and deep trees from tiny chunks."""
    data = b"".join(bytes([b]) * chunk for b in pattern) + b"\x07" * tail
    params = DagParams(version, chunk_size=chunk, max_links=links)
    builder = CidBuilder(params)
    builder.update(data)
    written = b"".join(iter_car(data, params))
    assert car_length(builder.build()) == len(written)
    plan = plan_car(data, params)
    assert (plan.length, plan.file_size, plan.cid) == (len(written), len(data), builder.finalize())


async def test_stream_refuses_a_file_changed_since_planning(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.write_bytes(sample_bytes(300_000, "before"))
    plan = plan_car(path, DagParams.kubo(1))
    path.write_bytes(sample_bytes(300_000, "after!"))
    with pytest.raises(IntegrityError, match="changed"):
        async for _ in iter_car_async(path, plan):
            pass


async def test_stream_refuses_a_car_longer_than_planned(tmp_path: Path) -> None:
    data = sample_bytes(300_000, "len")
    plan = plan_car(data, DagParams.kubo(1))
    short = CarPlan(plan.cid, plan.length - 1, plan.file_size, plan.params)
    with pytest.raises(IntegrityError, match="planned"):
        async for _ in iter_car_async(data, short, chunk_size=4096):
            pass


# --------------------------------------------------------------------------- the fake's CAR import


@pytest.mark.parametrize("version", [0, 1])
async def test_fake_imports_the_car_and_serves_the_file(tmp_path: Path, version: int) -> None:
    data = sample_bytes(900_000, f"fake-{version}")
    fake = FakePinata(jwt=JWT, blob_dir=tmp_path)
    pinata = backend(fake, gateway_url=GW)
    stored = await pinata.add(data, cid_version=version, labels={"round": "2"})
    assert stored.cid == cid_of_bytes(data, version)
    assert (tmp_path / stored.cid).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [stored.cid]  # no spool left over
    (item,) = fake.files.values()
    assert item["keyvalues"] == {"round": "2"} and item["size"] == len(data)
    assert await BackendChain([pinata]).fetch_bytes(stored.cid) == data
    await pinata.aclose()


def _car_form(car: bytes, *, car_field: bool = True) -> tuple[bytes, str]:
    boundary = "fedstore-test-boundary"
    fields = [("network", "public"), ("name", "x")] + ([("car", "true")] if car_field else [])
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    )
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.car"\r\n'
        "Content-Type: application/vnd.ipld.car\r\n\r\n"
    ).encode()
    return body + car + f"\r\n--{boundary}--\r\n".encode(), boundary


def _damaged_cars() -> dict[str, bytes]:
    data = sample_bytes(600_000, "damaged")
    car = b"".join(iter_car(data, DagParams.kubo(1)))
    flipped = bytearray(car)
    flipped[-100] ^= 0xFF
    return {
        "garbage": b"this is not a CAR at all",
        "truncated": car[: len(car) - 5000],
        "flipped byte": bytes(flipped),
        "header only": car[: len(fedstore.ipld.car.car_header(cid_of_bytes(data, 1)))],
    }


@pytest.mark.parametrize("damage", list(_damaged_cars()))
async def test_fake_rejects_a_malformed_car_with_400(tmp_path: Path, damage: str) -> None:
    fake = FakePinata(jwt=JWT, blob_dir=tmp_path)
    body, boundary = _car_form(_damaged_cars()[damage])
    async with httpx.AsyncClient(transport=fake) as client:
        response = await client.post(
            f"{UP}/v3/files",
            content=body,
            headers={
                "Authorization": f"Bearer {JWT}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["reason"] == "INVALID_CAR"
    assert fake.files == {} and list(tmp_path.iterdir()) == []


async def test_without_car_field_the_fake_stores_the_car_as_a_file() -> None:
    """The flag matters: a CAR sent as a plain file is just bytes with their own CID."""
    car = b"".join(iter_car(b"payload", DagParams.kubo(1)))
    fake = FakePinata(jwt=JWT)
    body, boundary = _car_form(car, car_field=False)
    async with httpx.AsyncClient(transport=fake) as client:
        response = await client.post(
            f"{UP}/v3/files",
            content=body,
            headers={
                "Authorization": f"Bearer {JWT}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
    assert response.json()["data"]["cid"] == cid_of_bytes(car, 1) != cid_of_bytes(b"payload", 1)


async def test_transport_errors_on_a_car_upload_are_retried() -> None:
    data = sample_bytes(400_000, "flaky")
    fake = FakePinata(jwt=JWT)
    fake.fail_next = [httpx.WriteError("connection reset by peer")]
    pinata = backend(fake)
    assert (await pinata.add(data, cid_version=1)).cid == cid_of_bytes(data, 1)
    assert fake.blobs[cid_of_bytes(data, 1)] == data
    fake.down = True
    with pytest.raises(UnavailableError):
        await pinata.add(data, cid_version=1)
    await pinata.aclose()


# --------------------------------------------------------------------------- memory


def _write_random(path: Path, size: int) -> None:
    """Incompressible, no repeated chunks (a repeated chunk is stored once in the CAR)."""
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))


async def test_64_mib_car_upload_keeps_memory_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CAR is streamed, never held: peak traced memory stays far below the file size.

    The fake verifies the CAR with fedstore.ipld.car, which keeps up to 16 MiB of
    blocks in memory before spilling to disk; that threshold is lowered here
    so the figure measures fedstore's upload path, not the fake's import.
    """
    monkeypatch.setattr(fedstore.ipld.car, "_SPOOL_IN_MEMORY", 1 << 20)
    size = 64 << 20
    path = tmp_path / "big.fsck"
    _write_random(path, size)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    fake = FakePinata(jwt=JWT, blob_dir=blobs)
    pinata = backend(fake)
    tracemalloc.start()
    try:
        stored = await pinata.add(path, cid_version=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await pinata.aclose()
    assert stored.cid == cid_of_file(path, 1)
    assert os.path.getsize(blobs / stored.cid) == size
    assert peak < size // 8, f"peak traced memory {peak / 2**20:.1f} MiB for a 64 MiB upload"
