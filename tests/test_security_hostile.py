"""Hostile content through every entry point that takes data from peers or backends.

fedstore.format's own hostile-input tests (test_format_hostile.py) check the
decoder alone. These follow the same payloads through the layers around it:
the local store, weights files, the backend chain, the federation's update
path, a node's sync and the CLI. Each must refuse with a fedstore error;
nothing may be executed (a pickle's ``__reduce__`` would create a marker
file) and nothing may be written (no file in the store, no catalog row, no
partial download).
"""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import trio
from fedstore_filesystem import FilesystemBackend
from fedstore_kubo import KuboBackend
from fedstore_kubo.testing import FakeKubo
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.testing import FakePinata

from fedstore.backends import BackendChain
from fedstore.backends.http import RetryPolicy, Secret
from fedstore.backends.memory import MemoryBackend
from fedstore.cli import main
from fedstore.errors import (
    FedstoreError,
    FormatError,
    IntegrityError,
    InvalidCIDError,
    ProtocolError,
    SizeLimitError,
)
from fedstore.federation.messages import UpdateMessage, decode_message, decode_tensors
from fedstore.format import decode, encode, inspect
from fedstore.format.container import FIXED
from fedstore.format.weight_files import load_weights_file, save_weights_file
from fedstore.ipld.cid import cid_of_bytes
from fedstore.store import LocalStore, checkpoint_filename

PEER = "12D3KooWHostileTrainer"


class Evil:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a pickle payload was executed"


@pytest.fixture
def payload(marker: pathlib.Path) -> bytes:
    return pickle.dumps({"fc.weight": Evil(marker)}, protocol=pickle.HIGHEST_PROTOCOL)


def tree(root: pathlib.Path) -> set[str]:
    """Every file under *root*, relative (the catalog's own files excluded)."""
    if not root.exists():
        return set()
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("catalog.sqlite") and p.name != "store.lock"
    }


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "fc.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "fc.bias": np.zeros(4, np.float32),
    }


# -- the payload is live: the marker proves a refusal means something ---------------------


def test_control_the_payload_runs_code_when_unpickled(tmp_path: pathlib.Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control)))  # noqa: S301 - the control experiment
    assert control.exists()


# -- pickles --------------------------------------------------------------------------------


def test_pickle_refused_by_codec_and_weights_files(payload: bytes, tmp_path: pathlib.Path) -> None:
    with pytest.raises(FormatError, match="pickle"):
        decode(payload)
    with pytest.raises(FormatError, match="pickle"):
        inspect(payload)
    for suffix in (".fsck", ".npz", ".safetensors", ".pkl", ".pt", ".pth", ".bin"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(payload)
        with pytest.raises(FormatError):
            load_weights_file(path)


def test_pickle_with_its_own_valid_cid_is_not_stored(
    payload: bytes, tmp_path: pathlib.Path
) -> None:
    """The CID matches (an attacker can always hash their bytes): the format check refuses."""
    with LocalStore(tmp_path / "node") as store:
        with pytest.raises(FormatError):
            store.save_encoded(3, payload, cid_of_bytes(payload))
        assert store.list_rounds() == []
    assert tree(tmp_path / "node") == set()


def test_catalogued_pickle_is_refused_on_load_and_by_the_cli(
    payload: bytes, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row and file that agree (as if written by a buggy or hostile tool) still never load."""
    node = tmp_path / "node"
    cid = cid_of_bytes(payload)
    with LocalStore(node) as store:
        rel = f"rounds/{checkpoint_filename(4, cid)}"
        (node / rel).write_bytes(payload)
        store.catalog.add_checkpoint(
            4,
            cid,
            cid_version=0,
            codec="fsck1+zstd",
            raw_size=1,
            stored_size=len(payload),
            path=rel,
        )
        with pytest.raises(FormatError, match="pickle"):
            store.load(4)
    out = tmp_path / "out.npz"
    for argv in (
        ["checkpoint", "load", "--dir", str(node), "--out", str(out)],
        ["checkpoint", "inspect", "--dir", str(node)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("fedstore: error:") and "pickle" in err
    assert not out.exists()


def test_pickle_swapped_into_the_store_fails_its_cid(
    payload: bytes, tmp_path: pathlib.Path
) -> None:
    with LocalStore(tmp_path / "node") as store:
        rec = store.save(1, weights())
        (store.dir / rec.path).write_bytes(payload)
        with pytest.raises(IntegrityError):
            store.load(1)
        assert store.get(1).status == "corrupt"


async def test_pickle_through_the_backend_chain(payload: bytes, tmp_path: pathlib.Path) -> None:
    """A backend may hold anything under its true CID: verification passes, decoding refuses."""
    backend = MemoryBackend()
    cid = (await backend.add(payload)).cid
    chain = BackendChain([backend])
    data = await chain.fetch_bytes(cid)
    assert data == payload
    with pytest.raises(FormatError):
        await trio.to_thread.run_sync(decode, data)
    dest = tmp_path / "fetched.fsck"
    await chain.fetch_to_file(cid, dest)
    with pytest.raises(FormatError):
        load_weights_file(dest)


def test_pickle_as_a_federated_update(payload: bytes) -> None:
    """The aggregator decodes an update's tensors with decode_tensors: refused, not run."""
    msg = decode_message(
        UpdateMessage(round=1, sender=PEER, num_samples=5, payload=payload).encode()
    )
    assert isinstance(msg, UpdateMessage) and msg.payload == payload
    with pytest.raises(ProtocolError):
        decode_tensors(msg.payload, max_decoded_size=1 << 20)


async def test_pickle_offered_to_a_syncing_node(payload: bytes, tmp_path: pathlib.Path) -> None:
    """A peer announces a round whose CID names a pickle: sync fails, nothing is stored."""
    from dataclasses import replace

    from fedstore.config import NodeConfig
    from fedstore.node import open_node
    from fedstore.node.events import NodeEvent, SyncFailed

    backend = MemoryBackend()
    cid = (await backend.add(payload)).cid
    events: list[NodeEvent] = []
    config = replace(
        NodeConfig(role="trainer", data_dir=tmp_path / "node"),
        reannounce_interval=0,
        head_timeout=1.0,
    )
    async with open_node(config, chain=BackendChain([backend]), on_event=events.append) as node:
        await node.catalog.record_announcement(7, cid, PEER, "model-cids")
        assert await node.sync() is None
        assert await node.head() is None
        assert await node.store.list_rounds() == []
    errors = [e for e in events if isinstance(e, SyncFailed)]
    assert len(errors) == 1 and errors[0].failures == 1
    assert "round 7" in errors[0].first and "pickle" in errors[0].first
    assert not [p for p in (tmp_path / "node" / "rounds").iterdir()]


# -- zstd bombs and lying headers beyond the codec --------------------------------------------


def bomb(raw_size: int) -> bytes:
    """A tiny checkpoint whose valid header and index declare *raw_size* bytes of zeros."""
    import json

    data_len = raw_size
    for _ in range(5):  # the index length depends on the digits of the data length
        index = json.dumps(
            {"x": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}},
            separators=(",", ":"),
        ).encode()
        index += b" " * (-len(index) % 8)
        head = len(index).to_bytes(8, "little") + index
        if len(head) + data_len == raw_size:
            break
        data_len = raw_size - len(head)
    # a zstd frame: declared content size, one raw block with the head, then RLE zero blocks
    out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([(3 << 6) | (1 << 2), 9 << 3]))
    out += raw_size.to_bytes(8, "little")
    blocks = [(0, len(head), head)]
    left = raw_size - len(head)
    while left > 0:
        size = min(left, 128 * 1024)
        blocks.append((1, size, b"\x00"))
        left -= size
    for i, (kind, size, body) in enumerate(blocks):
        last = int(i == len(blocks) - 1)
        out += ((size << 3) | (kind << 1) | last).to_bytes(3, "little") + body
    frame = bytes(out + b"\x00\x00\x00\x00")
    return FIXED.pack(b"FSCK", 1, 1, 0, raw_size, len(frame), 2) + b"{}" + frame


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    cap = 16 << 20
    monkeypatch.setenv("FEDSTORE_MAX_CHECKPOINT_BYTES", str(cap))
    return cap


async def test_zstd_bomb_through_chain_and_weights_file(
    small_cap: int, tmp_path: pathlib.Path
) -> None:
    import tracemalloc

    blob = bomb(1 << 30)  # 1 GiB of zeros in ~33 KB
    assert len(blob) < 64 * 1024
    backend = MemoryBackend()
    cid = (await backend.add(blob)).cid
    chain = BackendChain([backend])
    data = await chain.fetch_bytes(cid)
    tracemalloc.start()
    try:
        with pytest.raises(SizeLimitError, match="above the limit"):
            decode(data)
        path = tmp_path / "bomb.fsck"
        path.write_bytes(data)
        with pytest.raises(SizeLimitError):
            load_weights_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"refusing a bomb allocated {peak:,} bytes"


def test_bomb_stored_under_a_larger_cap_is_refused_on_load_under_a_smaller_one(
    small_cap: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap is the reader's: lowering it later still protects every load."""
    blob = bomb(1 << 30)
    monkeypatch.setenv("FEDSTORE_MAX_CHECKPOINT_BYTES", str(2 << 30))
    with LocalStore(tmp_path / "node") as store:
        store.save_encoded(2, blob, cid_of_bytes(blob))
        monkeypatch.setenv("FEDSTORE_MAX_CHECKPOINT_BYTES", str(small_cap))
        with pytest.raises(SizeLimitError, match="above the limit"):
            store.load(2)


def test_zstd_bomb_from_a_peer_is_not_stored(small_cap: int, tmp_path: pathlib.Path) -> None:
    """Refused on receipt: it never becomes the node's head (whose every load would fail)."""
    blob = bomb(1 << 30)
    with LocalStore(tmp_path / "node") as store:
        with pytest.raises(SizeLimitError):
            store.save_encoded(2, blob, cid_of_bytes(blob))
        assert store.list_rounds() == []


@pytest.mark.parametrize(
    "field",
    ["raw_size_up", "raw_size_down", "frame_size_up", "frame_size_down", "metadata_len"],
)
def test_checkpoint_whose_header_lies_is_not_stored(field: str, tmp_path: pathlib.Path) -> None:
    good = encode(weights(), {"round": "5"})
    magic, version, codec, flags, raw, frame, meta = FIXED.unpack_from(good)
    changes = {
        "raw_size_up": (raw + 4, frame, meta),
        "raw_size_down": (raw - 4, frame, meta),
        "frame_size_up": (raw, frame + 1, meta),
        "frame_size_down": (raw, frame - 1, meta),
        "metadata_len": (raw, frame, meta + 3),
    }[field]
    liar = FIXED.pack(magic, version, codec, flags, *changes) + good[FIXED.size :]
    with LocalStore(tmp_path / "node") as store:
        with pytest.raises(FormatError):
            store.save_encoded(5, liar, cid_of_bytes(liar))
        assert store.list_rounds() == []
    assert tree(tmp_path / "node") == set()


# -- backends and gateways that answer with other bytes ------------------------------------


async def no_sleep(_: float) -> None:
    return None


def chain_of(tmp_path: pathlib.Path, kubo: FakeKubo, pinata: FakePinata) -> BackendChain:
    retry = RetryPolicy(attempts=2, sleep=no_sleep)
    cfg = PinataConfig(
        jwt=Secret("fake-jwt"),
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


async def test_wrong_bytes_from_kubo_and_gateway_are_rejected_and_the_next_backend_used(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = encode(weights(), {"round": "9"})
    kubo, pinata = FakeKubo(), FakePinata()
    chain = chain_of(tmp_path, kubo, pinata)
    cid = cid_of_bytes(data)
    for backend in chain.backends:
        assert (await backend.add(data)).cid == cid
    kubo.corrupt = pinata.corrupt = True
    dest = tmp_path / "peer" / "latest.fsck"
    dest.parent.mkdir()
    result = await chain.fetch_to_file(cid, dest)
    assert result.backend == "filesystem"
    assert [(a.backend, type(a.error)) for a in result.attempts] == [
        ("kubo", IntegrityError),
        ("pinata", IntegrityError),
        ("filesystem", type(None)),
    ]
    assert dest.read_bytes() == data and sorted(os.listdir(dest.parent)) == ["latest.fsck"]
    assert await chain.fetch_bytes(cid) == data
    assert sum("rejected data from" in r.getMessage() for r in caplog.records) >= 2

    # the shared directory was tampered with too: every copy is wrong, nothing is written
    obj = next((tmp_path / "fs" / "objects").rglob(cid))
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    dest2 = dest.parent / "other.fsck"
    with pytest.raises(IntegrityError, match="every copy"):
        await chain.fetch_to_file(cid, dest2)
    with pytest.raises(IntegrityError):
        await chain.fetch_bytes(cid)
    assert sorted(os.listdir(dest.parent)) == ["latest.fsck"]  # no partial or temp file
    await chain.aclose()


async def test_backend_serving_another_objects_bytes_is_rejected(tmp_path: pathlib.Path) -> None:
    """Bytes that are a perfectly valid checkpoint, but not the one the CID names."""
    ours = encode(weights(), {"round": "1"})
    theirs = encode({"fc.weight": np.ones((8, 4), np.float32)}, {"round": "1"})
    liar, honest = MemoryBackend("liar"), MemoryBackend("honest")
    cid = (await honest.add(ours)).cid
    liar.objects[cid] = theirs
    chain = BackendChain([liar, honest])
    assert await chain.fetch_bytes(cid) == ours
    with pytest.raises(IntegrityError):
        await BackendChain([liar]).fetch_bytes(cid)


# -- names that try to escape a directory --------------------------------------------------

ESCAPING_CIDS = ["../x", "../../etc/passwd", "/etc/passwd", "Qm/../../x", "..", "a/b", "Qm\x00x"]


@pytest.mark.parametrize("cid", ESCAPING_CIDS)
async def test_path_like_cids_are_refused_everywhere(cid: str, tmp_path: pathlib.Path) -> None:
    root = tmp_path / "fs"
    fs = FilesystemBackend(root)
    await fs.add(b"something")
    before = tree(tmp_path)
    chain = BackendChain([fs])
    dest = tmp_path / "dest.fsck"
    attempts = [
        lambda: chain.fetch_to_file(cid, dest),
        lambda: chain.fetch_bytes(cid),
        lambda: fs.has(cid),
        lambda: fs.pin(cid),
        lambda: fs.unpin(cid),
        lambda: fs.is_pinned(cid),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidCIDError):
            await attempt()
    with pytest.raises(InvalidCIDError):
        async for _ in fs.fetch(cid):
            pass
    with LocalStore(tmp_path / "node") as store, pytest.raises(InvalidCIDError):
        store.save_encoded(1, encode(weights()), cid)
    with pytest.raises(ValueError, match="not a CID"):
        checkpoint_filename(1, cid)
    assert tree(tmp_path) == before  # nothing new written (the store's catalog aside)
    assert not (tmp_path.parent / "x").exists() and not dest.exists()


def test_round_numbers_cannot_carry_paths(capsys: pytest.CaptureFixture[str]) -> None:
    from fedstore.cli.node_cmd import _round_arg
    from fedstore.p2p.messages import WireFormatError, parse_announcement

    cid = cid_of_bytes(b"x")
    for bad in ("../3", "3/../4", "-1", "1e3", "0x10", " 7"):
        with pytest.raises(WireFormatError):
            parse_announcement(f"CID:{bad}:{cid}".encode())
        with pytest.raises(Exception, match="round"):
            _round_arg(bad)
    with pytest.raises(ValueError):
        checkpoint_filename(-1, cid)
    with pytest.raises(SystemExit):
        main(["checkpoint", "save", "--round", "../1", "--dir", "x", "--weights", "w.npz"])
    assert "argument --round: a round is a whole number" in capsys.readouterr().err


def test_tensor_names_with_path_separators_stay_names(tmp_path: pathlib.Path) -> None:
    """Names are data: a checkpoint from a peer writes nothing but the file asked for."""
    hostile = {
        "../../../../tmp/fedstore-escape": np.ones(3, np.float32),
        "/etc/cron.d/evil": np.zeros(2, np.float32),
        "a/../../b": np.arange(4, dtype=np.int64),
    }
    blob = encode(hostile)
    assert sorted(decode(blob).arrays) == sorted(hostile)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for suffix in (".npz", ".safetensors", ".fsck"):
        save_weights_file(out_dir / f"m{suffix}", decode(blob).arrays)
        loaded = load_weights_file(out_dir / f"m{suffix}")
        assert sorted(loaded) == sorted(hostile)
    assert sorted(os.listdir(out_dir)) == ["m.fsck", "m.npz", "m.safetensors"]
    assert not pathlib.Path("/tmp/fedstore-escape.npy").exists()
    # a careless user extracting the .npz with Python's zipfile still stays inside
    extract = tmp_path / "extract"
    with zipfile.ZipFile(out_dir / "m.npz") as zf:
        zf.extractall(extract)  # noqa: S202 - the point is that it sanitises member names
    for path in tmp_path.rglob("*"):
        assert path.resolve().is_relative_to(tmp_path.resolve())


@pytest.fixture
def saved_node(tmp_path: pathlib.Path) -> pathlib.Path:
    node = tmp_path / "node"
    with LocalStore(node) as store:
        store.save(1, weights())
    return node


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("model.pkl", "cannot save weights as '.pkl'"),
        ("model.pt", "cannot save weights as '.pt'"),
        ("node", "cannot write node: it is a directory"),  # the data directory itself
    ],
)
def test_cli_out_refuses_pickle_formats_and_directories(
    out: str,
    message: str,
    saved_node: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(saved_node.parent)
    before = tree(saved_node.parent)
    assert main(["checkpoint", "load", "--dir", "node", "--out", out]) == 1
    assert message in capsys.readouterr().err
    assert tree(saved_node.parent) == before


def test_cli_out_into_a_missing_directory_is_a_clean_error(
    saved_node: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = saved_node.parent / "no" / "such" / "dir" / "model.npz"
    assert main(["checkpoint", "load", "--dir", str(saved_node), "--out", str(out)]) == 1
    assert "fedstore: error:" in capsys.readouterr().err
    assert not out.parent.exists()


def test_fedstore_errors_are_all_one_tree() -> None:
    """Everything refused above is catchable as FedstoreError (one except clause for callers)."""
    for cls in (FormatError, SizeLimitError, IntegrityError, InvalidCIDError, ProtocolError):
        assert issubclass(cls, FedstoreError)
