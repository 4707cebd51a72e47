"""Backends that time out, rate-limit, fail with 5xx or drop the connection mid-body.

The plugins' own tests check each failure on one backend. These run the
whole chain (Kubo and Pinata fakes in front of the filesystem backend) and a
node on top of it: a checkpoint still gets stored and fetched, verified,
through whichever backend works; the catalog records the failures; no
partial file is ever left behind; and the node carries on.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from fedstore_filesystem import FilesystemBackend
from fedstore_kubo import KuboBackend
from fedstore_kubo.testing import FakeKubo
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.testing import FakePinata

from fedstore.backends import BackendChain
from fedstore.backends.http import RetryPolicy, Secret
from fedstore.catalog import AsyncCatalog, Catalog
from fedstore.config import NodeConfig
from fedstore.errors import UnavailableError
from fedstore.format import decode, encode
from fedstore.node import open_node
from fedstore.node.events import NodeEvent, Saved, Synced
from fedstore.node.replication import replicate

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYXVsdHMifQ.ZmF1bHRzLXNpZ25hdHVyZQ"
ATTEMPTS = 3


async def no_sleep(_: float) -> None:
    return None


class Dropping(httpx.AsyncBaseTransport):
    """Wraps a fake: every successful streamed body is cut after *keep* bytes by an error."""

    def __init__(self, inner: httpx.AsyncBaseTransport, keep: int) -> None:
        self.inner = inner
        self.keep = keep
        self.drops = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code >= 300 or not (
            request.url.path.endswith("/cat") or request.url.path.startswith("/ipfs/")
        ):
            return response

        # the fake's body is read whole (it is in memory), so no stream of the
        # fake is left half-read when the wrapper cuts its own
        await response.aread()

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            data = response.content
            for chunk in (data[i : i + 65536] for i in range(0, len(data), 65536)):
                if sent + len(chunk) > self.keep:
                    yield chunk[: self.keep - sent]
                    self.drops += 1
                    raise httpx.RemoteProtocolError("peer closed connection mid-body")
                sent += len(chunk)
                yield chunk

        return httpx.Response(
            response.status_code, headers=response.headers, content=body(), request=request
        )


def checkpoint_bytes() -> bytes:
    rng = np.random.default_rng(11)
    return encode({"w": rng.standard_normal((256, 512)).astype(np.float32)}, {"round": "1"})


def build_chain(
    tmp_path: Path, kubo: httpx.AsyncBaseTransport, pinata: httpx.AsyncBaseTransport
) -> BackendChain:
    retry = RetryPolicy(attempts=ATTEMPTS, sleep=no_sleep)
    cfg = PinataConfig(
        jwt=Secret(JWT),
        api_url="https://api.pinata.test",
        upload_url="https://uploads.pinata.test",
        gateway_url="https://gw.pinata.test",
    )
    return BackendChain(
        [
            KuboBackend("http://127.0.0.1:5001", transport=kubo, retry=retry),
            PinataBackend(cfg, transport=pinata, retry=retry),
            FilesystemBackend(tmp_path / "fs"),
        ]
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".part") or n.startswith("."))


async def test_fetch_falls_through_timeouts_429_and_500_to_a_working_backend(
    tmp_path: Path,
) -> None:
    data = checkpoint_bytes()
    kubo, pinata = FakeKubo(), FakePinata(jwt=JWT)
    chain = build_chain(tmp_path, kubo, pinata)
    cid = None
    for backend in chain.backends:
        cid = (await backend.add(data)).cid
    assert cid is not None
    kubo.fail_next = [httpx.ReadTimeout("timed out")] * ATTEMPTS
    pinata.fail_next = [httpx.Response(429, headers={"Retry-After": "1"}, text="slow down")] + [
        httpx.Response(500, text="Internal Server Error")
    ] * (ATTEMPTS - 1)
    dest = tmp_path / "dl" / "latest.fsck"
    dest.parent.mkdir()
    result = await chain.fetch_to_file(cid, dest)
    assert result.backend == "filesystem"
    assert [(a.backend, a.ok) for a in result.attempts] == [
        ("kubo", False),
        ("pinata", False),
        ("filesystem", True),
    ]
    assert isinstance(result.attempts[0].error, UnavailableError)
    assert "timed out" in result.attempts[0].describe()
    assert isinstance(result.attempts[1].error, UnavailableError)  # RateLimitedError is one too
    assert "500" in result.attempts[1].describe()
    assert kubo.fail_next == [] and pinata.fail_next == []  # every retry was spent
    assert decode(dest.read_bytes()).metadata == {"round": "1"}
    assert leftovers(dest.parent) == []


async def test_connection_dropped_mid_body_resumes_or_falls_through_verified(
    tmp_path: Path,
) -> None:
    data = checkpoint_bytes()
    fake_kubo, fake_pinata = FakeKubo(), FakePinata(jwt=JWT)
    kubo, pinata = Dropping(fake_kubo, keep=200_000), Dropping(fake_pinata, keep=100_000)
    chain = build_chain(tmp_path, kubo, pinata)
    cid = None
    for backend in chain.backends[:2]:
        cid = (await backend.add(data)).cid
    assert cid is not None
    dest = tmp_path / "dl" / "latest.fsck"
    dest.parent.mkdir()
    # every response breaks after a while; each resumes from its offset, making progress
    result = await chain.fetch_to_file(cid, dest)
    assert result.backend in ("kubo", "pinata")
    assert kubo.drops + pinata.drops >= 1
    assert dest.read_bytes() == data and leftovers(dest.parent) == []

    # a connection that breaks before any byte arrives makes no progress: next backend
    kubo.keep = pinata.keep = 0
    fs = chain.backends[2]
    assert (await fs.add(data)).cid == cid
    dest2 = dest.parent / "again.fsck"
    result = await chain.fetch_to_file(cid, dest2)
    assert [a.ok for a in result.attempts] == [False, False, True]
    assert dest2.read_bytes() == data and leftovers(dest.parent) == []

    # and with no working backend at all: a clear error, nothing written
    (tmp_path / "fs" / "objects" / cid[-2:] / cid).unlink()
    with pytest.raises(UnavailableError, match="could not fetch"):
        await chain.fetch_to_file(cid, dest.parent / "never.fsck")
    assert sorted(os.listdir(dest.parent)) == ["again.fsck", "latest.fsck"]
    await chain.aclose()


async def test_store_survives_failing_services_and_records_why(tmp_path: Path) -> None:
    data = checkpoint_bytes()
    path = tmp_path / "round_000001.fsck"
    path.write_bytes(data)
    kubo, pinata = FakeKubo(), FakePinata(jwt=JWT)
    kubo.fail_next = [httpx.ReadTimeout("timed out")] * ATTEMPTS
    pinata.fail_next = [
        httpx.Response(429, headers={"Retry-After": "2"}, text="rate limited"),
        httpx.WriteError("connection dropped while uploading"),
        httpx.Response(502, text="Bad Gateway"),
    ]
    chain = build_chain(tmp_path, kubo, pinata)
    catalog = AsyncCatalog(Catalog.open(tmp_path / "node"))
    try:
        from fedstore.ipld.cid import cid_of_bytes

        cid = cid_of_bytes(data)
        result = await replicate(path, cid, chain, catalog, {"round": "1"}, name="round-1")
        assert result.stored_on == "filesystem"
        rows = {r.backend: r for r in await catalog.pins_for(cid)}
        assert {b: r.state for b, r in rows.items()} == {
            "kubo": "failed",
            "pinata": "failed",
            "filesystem": "pinned",
        }
        assert "timed out" in (rows["kubo"].last_error or "")
        assert "502" in (rows["pinata"].last_error or "")
        assert JWT not in json.dumps([r.last_error for r in rows.values()])
        assert kubo.blobs == {} and pinata.files == {}
        assert await chain.fetch_bytes(cid) == data
    finally:
        await catalog.aclose()
        await chain.aclose()


async def test_node_syncs_through_a_backend_that_times_out(tmp_path: Path) -> None:
    """The node carries on: sync fetches from the backend after the dead one."""
    data = checkpoint_bytes()
    kubo = FakeKubo()
    fs = FilesystemBackend(tmp_path / "fs")
    cid = (await fs.add(data)).cid
    kubo.fail_next = [httpx.ConnectTimeout("connect timed out")] * (ATTEMPTS * 4)
    retry = RetryPolicy(attempts=ATTEMPTS, sleep=no_sleep)
    chain = BackendChain([KuboBackend("http://127.0.0.1:5001", transport=kubo, retry=retry), fs])
    events: list[NodeEvent] = []
    config = replace(NodeConfig(role="trainer", data_dir=tmp_path / "node"), reannounce_interval=0)
    async with open_node(config, chain=chain, on_event=events.append) as node:
        await node.catalog.record_announcement(4, cid, "12D3KooWSomePeer", "model-cids")
        assert await node.sync() == (4, cid)
        ckpt = await node.load_checkpoint()
        assert ckpt.metadata == {"round": "1"}
        # and the node keeps working: it can save, store and announce its own next round
        rec = await node.save_checkpoint(5, dict(ckpt.arrays))
        assert (await node.head()) == (5, rec.cid)
    assert Synced(4, cid) in events and Saved(5, rec.cid) in events
    await chain.aclose()
