"""LocalStore: atomic save, verified load, idempotence, conflicts, prune, reconcile."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedstore import format as fmt
from fedstore.catalog import Catalog, RoundConflictError
from fedstore.errors import CheckpointNotFoundError, FormatError, IntegrityError
from fedstore.ipld.cid import cid_of_bytes, parse_cid
from fedstore.store import (
    AsyncLocalStore,
    LocalStore,
    checkpoint_filename,
    default_checkpoint_dir,
    parse_checkpoint_filename,
)


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
        "conv1.bias": rng.normal(size=(8,)).astype(np.float32),
        "fc.weight": rng.normal(size=(10, 72)).astype(np.float32),
        "fc.bias": np.zeros(10, dtype=np.float32),
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    s = LocalStore(tmp_path / "node", peer_id="peerSelf")
    yield s
    s.close()


def test_save_and_load_round_trip(store: LocalStore) -> None:
    rec = store.save(1, weights(1), {"round": "1", "task": "digits"})
    path = store.dir / rec.path
    data = path.read_bytes()
    assert rec.cid == cid_of_bytes(data) and parse_cid(rec.cid).version == 0
    assert rec.stored_size == len(data) and rec.created_by == "peerSelf"
    assert rec.raw_size == fmt.inspect(data).raw_size and rec.codec.startswith("fsck")
    assert path.parent.name == "rounds" and path.name == checkpoint_filename(1, rec.cid)
    ckpt = store.load(1)
    assert_same(ckpt.arrays, weights(1))
    assert ckpt.metadata == {"round": "1", "task": "digits"}
    assert store.path_of(1) == path.resolve()
    assert list((store.dir / "tmp").iterdir()) == []


def test_latest_comes_from_the_catalog(store: LocalStore) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoints"):
        store.load()
    for r in (1, 2, 3):
        store.save(r, weights(r))
    # a file that merely looks like a newer round is not a checkpoint of this store
    fake = store.dir / "rounds" / checkpoint_filename(99, "QmFake")
    fake.write_bytes(b"not a checkpoint")
    latest = store.latest()
    assert latest is not None and latest.round == 3
    assert_same(store.load().arrays, weights(3))
    assert store.list_rounds() == [1, 2, 3]
    assert store.reconcile().orphans == [f"rounds/{fake.name}"]
    assert fake.exists()  # reported, never deleted


def test_same_round_same_bytes_is_idempotent(store: LocalStore) -> None:
    first = store.save(2, weights(2))
    path = store.dir / first.path
    mtime = path.stat().st_mtime_ns
    again = store.save(2, weights(2))
    assert again == first
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_different_bytes_for_a_round_conflict_or_replace(store: LocalStore) -> None:
    first = store.save(2, weights(2))
    with pytest.raises(RoundConflictError, match="round 2 already has checkpoint"):
        store.save(2, weights(20))
    assert_same(store.load(2).arrays, weights(2))
    assert sorted(p.name for p in (store.dir / "rounds").iterdir()) == [Path(first.path).name]
    new = store.save(2, weights(20), replace=True)
    assert new.cid != first.cid
    assert_same(store.load(2).arrays, weights(20))
    assert not (store.dir / first.path).exists()
    assert sorted(p.name for p in (store.dir / "rounds").iterdir()) == [Path(new.path).name]


def test_cid_version_1(tmp_path: Path) -> None:
    with LocalStore(tmp_path, cid_version=1) as s:
        rec = s.save(0, weights(0))
        assert rec.cid.startswith("b") and rec.cid_version == 1
        assert rec.cid == cid_of_bytes((tmp_path / rec.path).read_bytes(), cid_version=1)
        assert_same(s.load(0).arrays, weights(0))


def test_save_encoded_verifies_before_writing(store: LocalStore) -> None:
    blob = fmt.encode(weights(5), {"round": "5"})
    cid = cid_of_bytes(blob)
    other = cid_of_bytes(blob + b"x")
    with pytest.raises(IntegrityError):
        store.save_encoded(5, blob, other)
    garbage = b"definitely not a checkpoint"
    with pytest.raises(FormatError):
        store.save_encoded(6, garbage, cid_of_bytes(garbage))
    assert store.list_rounds() == []
    assert list((store.dir / "rounds").iterdir()) == []
    assert list((store.dir / "tmp").iterdir()) == []
    rec = store.save_encoded(5, blob, cid)
    assert rec.cid == cid and (store.dir / rec.path).read_bytes() == blob


def test_prune_and_delete(store: LocalStore) -> None:
    recs = [store.save(r, weights(r)) for r in range(1, 6)]
    deleted = store.prune(keep_last=2)
    assert [d.round for d in deleted] == [1, 2, 3]
    assert store.list_rounds() == [4, 5]
    assert all(not (store.dir / r.path).exists() for r in recs[:3])
    assert all((store.dir / r.path).exists() for r in recs[3:])
    assert store.prune(keep_last=5) == []
    with pytest.raises(ValueError, match="keep_last"):
        store.prune(keep_last=0)
    gone = store.delete(4)
    assert gone.round == 4 and not (store.dir / gone.path).exists()
    with pytest.raises(CheckpointNotFoundError):
        store.delete(4)
    with pytest.raises(CheckpointNotFoundError):
        store.load(4)


def test_row_with_missing_file_is_flagged_on_open(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        s.save(1, weights(1))
        s.catalog.add_checkpoint(
            2,
            "QmMissingFile",
            cid_version=0,
            codec="fsck1+zstd",
            raw_size=10,
            stored_size=10,
            path="rounds/" + checkpoint_filename(2, "QmMissingFile"),
        )
    with LocalStore(tmp_path) as s:
        report = s.last_reconcile
        assert report is not None and report.missing == [2] and not report.corrupt
        assert s.get(2).status == "missing"
        latest = s.latest()
        assert latest is not None and latest.round == 1
        with pytest.raises(CheckpointNotFoundError, match="missing"):
            s.load(2)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_files_are_flagged(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        recs = [s.save(r, weights(r)) for r in (1, 2, 3)]
    flip_byte(tmp_path / recs[2].path, recs[2].stored_size // 2)  # latest: same size, bad bytes
    with open(tmp_path / recs[0].path, "r+b") as f:  # oldest: torn (truncated)
        f.truncate(recs[0].stored_size // 3)
    with LocalStore(tmp_path) as s:
        report = s.last_reconcile
        assert report is not None and sorted(report.corrupt) == [1, 3]
        assert report.hashed >= 1
        latest = s.latest()
        assert latest is not None and latest.round == 2
        assert_same(s.load().arrays, weights(2))
        with pytest.raises(IntegrityError, match="does not match its CID"):
            s.load(3)


def test_load_detects_corruption_the_size_check_cannot(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        recs = [s.save(r, weights(r)) for r in (1, 2)]
    flip_byte(tmp_path / recs[0].path, 100)
    with LocalStore(tmp_path, verify_on_open="size") as s:
        assert s.last_reconcile is not None and s.last_reconcile.clean
        with pytest.raises(IntegrityError):
            s.load(1)
        assert s.get(1).status == "corrupt"
        # repaired by saving the same bytes again, and flagged ok
        rec = s.save(1, weights(1))
        assert rec.status == "ok" and rec.cid == recs[0].cid
        assert_same(s.load(1).arrays, weights(1))


def test_restored_file_is_flagged_ok_again(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        rec = s.save(1, weights(1))
    f = tmp_path / rec.path
    saved = f.read_bytes()
    f.unlink()
    with LocalStore(tmp_path) as s:
        assert s.last_reconcile is not None and s.last_reconcile.missing == [1]
        f.write_bytes(saved)
        assert s.reconcile().recovered == [1]
        assert s.get(1).status == "ok"


def test_full_verify_hashes_every_file(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        for r in (1, 2, 3):
            s.save(r, weights(r))
        assert s.reconcile("size").hashed == 0
        assert s.reconcile("latest").hashed == 1
        assert s.reconcile("full").hashed == 3


def test_stale_temp_files_removed_unless_a_save_is_running(tmp_path: Path) -> None:
    with LocalStore(tmp_path) as s:
        s.save(1, weights(1))
    stale = tmp_path / "tmp" / "round_000002_x.part"
    stale.write_bytes(b"half a checkpoint")
    # another saver holds the shared store lock: temp files are left alone
    fd = os.open(tmp_path / "store.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with LocalStore(tmp_path) as s:
            report = s.last_reconcile
            assert report is not None and report.temp_cleanup_skipped
            assert stale.exists()
    finally:
        os.close(fd)
    with LocalStore(tmp_path) as s:
        report = s.last_reconcile
        assert report is not None and report.removed_temp_files == ["tmp/round_000002_x.part"]
        assert not stale.exists()
        assert "removed 1 stale temp file(s)" in report.lines()


def test_shared_catalog_is_not_closed_by_the_store(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path)
    with LocalStore(tmp_path, cat) as s:
        s.save(1, weights(1))
    assert cat.list_rounds() == [1]  # still open
    cat.close()


def test_checkpoint_names_and_default_dir() -> None:
    name = checkpoint_filename(7, "QmAbc")
    assert name == "round_000007_QmAbc.fsck"
    assert parse_checkpoint_filename(name) == (7, "QmAbc")
    assert parse_checkpoint_filename("round_7_x.txt") is None
    with pytest.raises(ValueError):
        checkpoint_filename(1, "../etc")
    assert default_checkpoint_dir(env={}) == Path("fedstore-data")
    assert default_checkpoint_dir("trainer", env={}) == Path("fedstore-data")  # one rule
    assert default_checkpoint_dir(env={"CHECKPOINT_DIR": "/data/x"}) == Path("/data/x")


async def test_async_store(tmp_path: Path) -> None:
    async with await AsyncLocalStore.open(tmp_path, peer_id="p") as s:
        rec = await s.save(1, weights(1), {"round": "1"})
        assert (await s.latest()) == rec
        ckpt = await s.load()
        assert_same(ckpt.arrays, weights(1))
        got_rec, data = await s.read_verified(1)
        assert got_rec == rec and cid_of_bytes(data) == rec.cid
        await s.save(2, weights(2))
        assert await s.list_rounds() == [1, 2]
        assert [r.round for r in await s.prune(1)] == [1]
        assert (await s.catalog.latest_round()) == 2
        assert (await s.reconcile("full")).clean
