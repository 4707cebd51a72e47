"""Save with fallback end to end: pinata, kubo, filesystem; pin rows; ``pins retry``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from fedstore_filesystem import FilesystemBackend
from fedstore_kubo import KuboBackend
from fedstore_kubo.testing import FakeKubo
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.testing import FakePinata

from fedstore.backends import BackendChain, build_chain
from fedstore.backends.http import RetryPolicy, Secret
from fedstore.backends.testing import sample_bytes
from fedstore.catalog import AsyncCatalog, Catalog
from fedstore.errors import UnavailableError
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.replication import replicate, retry_failed_pins

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYWxsYmFjayJ9.ZmFsbGJhY2stc2lnbmF0dXJl"


async def no_sleep(_: float) -> None:
    return None


def free_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, str, bytes]:
    data = sample_bytes(700_000, "fallback")
    path = tmp_path / "round_000003.fsck"
    path.write_bytes(data)
    return path, cid_of_bytes(data, 0), data


@pytest.fixture
async def catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    cat = AsyncCatalog(Catalog.open(tmp_path / "node"))
    yield cat
    await cat.aclose()


def fake_chain(tmp_path: Path, fake_pinata: FakePinata, fake_kubo: FakeKubo) -> BackendChain:
    retry = RetryPolicy(attempts=3, sleep=no_sleep)
    cfg = PinataConfig(
        jwt=Secret(JWT),
        api_url="https://api.pinata.test",
        upload_url="https://uploads.pinata.test",
        gateway_url="https://gw.pinata.test",
    )
    return BackendChain(
        [
            PinataBackend(cfg, transport=fake_pinata, retry=retry),
            KuboBackend("http://127.0.0.1:5001", transport=fake_kubo, retry=retry),
            FilesystemBackend(tmp_path / "fs"),
        ]
    )


@pytest.mark.parametrize("pinata_failure", ["503", "quota"])
async def test_save_falls_back_to_filesystem_and_retry_repins(
    tmp_path: Path,
    checkpoint: tuple[Path, str, bytes],
    catalog: AsyncCatalog,
    pinata_failure: str,
) -> None:
    path, cid, data = checkpoint
    fake_pinata, fake_kubo = FakePinata(jwt=JWT), FakeKubo()
    if pinata_failure == "503":
        fake_pinata.fail_next = [httpx.Response(503, text="Service Unavailable")] * 3
    else:
        quota = {"error": {"reason": "PLAN_LIMIT_EXCEEDED", "details": "storage limit reached"}}
        fake_pinata.fail_next = [httpx.Response(403, json=quota)]
    fake_kubo.down = True
    chain = fake_chain(tmp_path, fake_pinata, fake_kubo)

    result = await replicate(path, cid, chain, catalog, {"round": "3", "peer": "p1"}, name="r3")

    assert result.stored_on == "filesystem"
    assert [(a.backend, a.ok) for a in result.attempts] == [
        ("pinata", False),
        ("kubo", False),
        ("filesystem", True),
    ]
    rows = {r.backend: r for r in await catalog.pins_for(cid)}
    assert rows["pinata"].state == "failed"
    assert (
        ("503" in rows["pinata"].last_error)
        if pinata_failure == "503"
        else ("PLAN_LIMIT_EXCEEDED" in rows["pinata"].last_error)
    )
    assert rows["kubo"].state == "failed" and "could not connect" in rows["kubo"].last_error
    assert rows["filesystem"].state == "pinned" and rows["filesystem"].last_error is None
    assert JWT not in json.dumps([r.last_error for r in rows.values()])
    assert fake_pinata.files == {}

    # Pinata is back; Kubo is still down. Retry only pinata first.
    outcomes = await retry_failed_pins(chain, catalog, backends=["pinata"])
    assert [(o.backend, o.state) for o in outcomes] == [("pinata", "pinned")]
    rows = {r.backend: r for r in await catalog.pins_for(cid)}
    assert rows["pinata"].state == "pinned" and rows["pinata"].last_error is None
    assert rows["pinata"].backend_ref in fake_pinata.files
    assert rows["pinata"].attempts == 2
    assert fake_pinata.blobs[cid] == data
    assert rows["kubo"].state == "failed"

    # Kubo back too: a full retry fixes it; the data came from the local file's copy
    # fetched (verified) through the other backends, since the catalog has no checkpoint row.
    fake_kubo.down = False
    outcomes = await retry_failed_pins(chain, catalog)
    assert [(o.backend, o.state) for o in outcomes] == [("kubo", "pinned")]
    assert fake_kubo.blobs[cid] == data
    assert {r.state for r in await catalog.pins_for(cid)} == {"pinned"}
    await chain.aclose()


async def test_nothing_accepts_records_every_failure(
    tmp_path: Path, checkpoint: tuple[Path, str, bytes], catalog: AsyncCatalog
) -> None:
    path, cid, _ = checkpoint
    fake_pinata, fake_kubo = FakePinata(jwt=JWT), FakeKubo()
    fake_pinata.down = fake_kubo.down = True
    retry = RetryPolicy(attempts=2, sleep=no_sleep)
    chain = BackendChain(
        [
            PinataBackend(
                PinataConfig(
                    jwt=Secret(JWT), api_url="https://a.test", upload_url="https://u.test"
                ),
                transport=fake_pinata,
                retry=retry,
            ),
            KuboBackend("http://127.0.0.1:5001", transport=fake_kubo, retry=retry),
        ]
    )
    with pytest.raises(UnavailableError, match="no backend accepted"):
        await replicate(path, cid, chain, catalog)
    assert {(r.backend, r.state) for r in await catalog.pins(state="failed")} == {
        ("pinata", "failed"),
        ("kubo", "failed"),
    }
    await chain.aclose()


async def test_unreachable_services_on_localhost_land_on_filesystem(
    tmp_path: Path, checkpoint: tuple[Path, str, bytes], catalog: AsyncCatalog
) -> None:
    """Real sockets: Pinata and Kubo configured at 127.0.0.1 ports where nothing listens."""
    path, cid, _ = checkpoint
    pinata_port, kubo_port = free_port(), free_port()
    env = {
        "PINATA_JWT": JWT,
        "PINATA_API_URL": f"http://127.0.0.1:{pinata_port}",
        "PINATA_UPLOAD_URL": f"http://127.0.0.1:{pinata_port}",
        "FEDSTORE_KUBO_API": f"/ip4/127.0.0.1/tcp/{kubo_port}",
        "FEDSTORE_FS_ROOT": str(tmp_path / "fs"),
        "FEDSTORE_HTTP_ATTEMPTS": "2",
        "FEDSTORE_HTTP_BACKOFF": "0",
    }
    chain = build_chain(["pinata", "kubo", "filesystem"], env)
    assert chain.names == ["pinata", "kubo", "filesystem"]
    result = await replicate(path, cid, chain, catalog)
    assert result.stored_on == "filesystem"
    rows = {r.backend: r for r in await catalog.pins_for(cid)}
    assert rows["pinata"].state == rows["kubo"].state == "failed"
    assert "could not connect" in rows["pinata"].last_error
    assert f"127.0.0.1:{kubo_port}" in rows["kubo"].last_error
    assert rows["filesystem"].state == "pinned"
    health = await chain.health()
    assert health["pinata"].reachable is False and health["kubo"].reachable is False
    assert JWT not in health["pinata"].line()
    await chain.aclose()


async def test_retry_skips_backends_not_in_chain(
    tmp_path: Path, checkpoint: tuple[Path, str, bytes], catalog: AsyncCatalog
) -> None:
    _, cid, _ = checkpoint
    await catalog.set_pin(cid, "pinata", "failed", None, "earlier failure")
    chain = BackendChain([FilesystemBackend(tmp_path / "fs")])
    outcomes = await retry_failed_pins(chain, catalog)
    assert [(o.backend, o.state) for o in outcomes] == [("pinata", "skipped")]
    assert (await catalog.pins_for(cid))[0].state == "failed"


def test_cli_pins_ls_and_retry(
    tmp_path: Path,
    checkpoint: tuple[Path, str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trio

    import fedstore.backends
    from fedstore.cli import main

    path, cid, _ = checkpoint
    node = tmp_path / "node"
    fake_pinata, fake_kubo = FakePinata(jwt=JWT), FakeKubo()
    fake_pinata.fail_next = [httpx.Response(503)] * 3
    fake_kubo.down = True

    async def save() -> None:
        cat = AsyncCatalog(Catalog.open(node))
        async with cat, fake_chain(tmp_path, fake_pinata, fake_kubo) as chain:
            await replicate(path, cid, chain, cat)

    trio.run(save)
    monkeypatch.chdir(tmp_path)
    assert main(["pins", "ls", "--dir", str(node), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["backend"], r["state"]) for r in rows} == {
        ("pinata", "failed"),
        ("kubo", "failed"),
        ("filesystem", "pinned"),
    }
    assert main(["pins", "ls", "--dir", str(node)]) == 0
    table = capsys.readouterr().out
    assert cid[:20] in table and "pinata" in table and "filesystem" in table

    # `pins retry` with Pinata back (the chain the command builds is replaced by the fakes).
    monkeypatch.setattr(
        fedstore.backends,
        "build_chain",
        lambda names, env, ctx=None: fake_chain(tmp_path, fake_pinata, fake_kubo),
    )
    assert main(["pins", "retry", "--dir", str(node), "--backends", "pinata"]) == 0
    out = capsys.readouterr().out
    assert f"{cid}  pinata" in out and "pinned" in out
    assert main(["pins", "retry", "--dir", str(node)]) == 1  # kubo still down
    assert "kubo" in capsys.readouterr().out
    assert main(["pins", "ls", "--dir", str(tmp_path / "nowhere")]) == 1
