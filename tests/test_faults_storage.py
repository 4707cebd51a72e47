"""Storage faults (issue 15 item 9): one node per data directory, a lost or emptied catalog,
a read-only data directory, and catalog paths SQLite's URI syntax would misread.

Faults are real: a second ``fedstore node`` process on the same directory, a
catalog truncated to zero bytes on disk, a data directory on a tmpfs
remounted read-only (as root; without root, a directory without write
permission), a directory whose name holds ``?``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedstore.catalog import Catalog
from fedstore.cli import main
from fedstore.errors import CatalogError, ConfigError
from fedstore.format.weight_files import save_weights_file
from fedstore.node.driver import NodeProcess, python_env
from fedstore.store import LocalStore
from fedstore.store.dirlock import DataDirLock
from fedstore.store.rebuild import rebuild_catalog


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CHECKPOINT_DIR", "FEDSTORE_DIR", "FEDSTORE_CONFIG", "FEDSTORE_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def weights(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(seed).standard_normal(32).astype(np.float32)}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedstore: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ one node per directory


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_node_on_the_same_directory_is_refused_naming_the_first(tmp_path: Path) -> None:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "objects")
    d = str(tmp_path / "node")
    with NodeProcess("first", ["--dir", d, "--reannounce", "0"], env) as first:
        first.expect("READY")
        second = subprocess.run(
            [sys.executable, "-m", "fedstore", "node", "--dir", d, "--status"],
            input="",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert second.returncode == 1
        line = one_line_error(second.stderr)
        assert f"pid {first.pid}" in line and "in use by another fedstore node" in line
        assert "READY=" not in second.stdout  # it never came up with the same peer id
        first.run("rounds")  # the first is unharmed
    # the kernel released the lock with the process: the directory is free again
    with DataDirLock(d):
        pass


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_lock_dies_with_a_sigkilled_holder(tmp_path: Path) -> None:
    d = tmp_path / "node"
    d.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedstore.store.dirlock import DataDirLock;"
            f"lock = DataDirLock({str(d)!r}).acquire(); print('HELD', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            LocalStore(d, exclusive=True)
        holder.kill()
        holder.wait(timeout=10)
        with LocalStore(d, exclusive=True) as store:  # free again, nothing stale
            store.save(1, weights(1))
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_stores_without_the_lock_share_the_directory_with_a_node(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "d", exclusive=True) as node_store:
        node_store.save(1, weights(1))
        with LocalStore(tmp_path / "d") as cli_store:  # `fedstore checkpoint ...` beside a node
            assert cli_store.list_rounds() == [1]
        with pytest.raises(ConfigError, match="in use"):
            LocalStore(tmp_path / "d", exclusive=True)


# ------------------------------------------------------------------ a lost catalog


def saved_directory(tmp_path: Path, rounds: int = 3) -> tuple[Path, dict[int, str]]:
    d = tmp_path / "node"
    cids = {}
    with LocalStore(d) as store:
        for r in range(1, rounds + 1):
            cids[r] = store.save(r, weights(r)).cid
    return d, cids


def test_a_zero_length_catalog_is_refused_not_silently_recreated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, _cids = saved_directory(tmp_path)
    db = d / "catalog.sqlite"
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    db.write_bytes(b"")  # truncated on disk
    for argv in (
        ["checkpoint", "ls"],
        ["checkpoint", "verify"],
        ["checkpoint", "save", "--round", "4", "--weights", str(weights_file(tmp_path))],
        ["catalog", "rounds"],
    ):
        rc, _out, err = run(capsys, *argv, "--dir", str(d))
        assert rc == 1, argv
        line = one_line_error(err)
        assert "fedstore db rebuild --dir" in line and ("0 bytes" in line), line
    assert db.stat().st_size == 0  # nothing recreated it
    with pytest.raises(CatalogError, match="db rebuild"):
        Catalog.open(d)


def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "w.npz"
    if not path.exists():
        save_weights_file(path, weights(99))
    return path


def test_a_missing_catalog_beside_round_files_is_refused(tmp_path: Path) -> None:
    d, _cids = saved_directory(tmp_path, rounds=2)
    for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (d / name).unlink(missing_ok=True)
    with pytest.raises(CatalogError, match="missing but .* 2 checkpoint file"):
        LocalStore(d)
    assert not (d / "catalog.sqlite").exists()


def test_db_rebuild_recovers_every_intact_round_and_reports_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, cids = saved_directory(tmp_path, rounds=3)
    # damage: one file corrupted, one stray file that is not a checkpoint
    corrupt = d / "rounds" / f"round_000002_{cids[2]}.fsck"
    raw = bytearray(corrupt.read_bytes())
    raw[-1] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    (d / "rounds" / "round_000009_notacid.fsck").write_bytes(b"junk")
    (d / "catalog.sqlite").write_bytes(b"")

    rc, out, err = run(capsys, "db", "rebuild", "--dir", str(d))
    assert rc == 1  # something was skipped: say so in the exit status
    assert "2 checkpoint(s) recorded (rounds 1, 3)" in out and "not recoverable" in out
    assert "moved aside" in out
    assert "round_000002" in err and "does not match" in err
    assert "round_000009_notacid" in err
    assert list(d.glob("catalog.sqlite.lost-*"))  # the empty file kept aside

    rc, out, _err = run(capsys, "checkpoint", "ls", "--json", "--dir", str(d))
    assert rc == 0 and out.count('"round"') == 2
    with LocalStore(d) as store:
        assert store.latest() is not None and store.latest().cid == cids[3]  # type: ignore[union-attr]
        assert np.array_equal(store.load(1).arrays["w"], weights(1)["w"])
        report = store.reconcile("full")
        assert not (report.missing or report.corrupt)


def test_db_rebuild_refuses_an_intact_catalog_and_a_running_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = saved_directory(tmp_path, rounds=1)
    with Catalog.open(d) as cat:
        cat.upsert_peer("12D3KooWpeer")
    rc, _out, err = run(capsys, "db", "rebuild", "--dir", str(d))
    assert rc == 1 and "intact" in one_line_error(err)
    with Catalog.open(d) as cat:
        assert cat.get_peer("12D3KooWpeer") is not None  # untouched
    with LocalStore(d, exclusive=True), pytest.raises(ConfigError, match="in use"):
        rebuild_catalog(d, force=True)
    report = rebuild_catalog(d, force=True)
    assert [r.round for r in report.recorded] == [1] and report.moved


# ------------------------------------------------------------------ a read-only data directory


@contextlib.contextmanager
def read_only_copy(source: Path, where: Path) -> Iterator[Path]:
    """*source* copied into a directory that cannot be written, even by root."""
    where.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)], check=True)
        try:
            shutil.copytree(source, where / "d")
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
            yield where / "d"
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
    else:
        shutil.copytree(source, where / "d")
        for p in [where / "d", *(where / "d").rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield where / "d"
        finally:
            for p in [where / "d", *(where / "d").rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_a_read_only_data_directory_serves_reads_and_refuses_writes_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, cids = saved_directory(tmp_path, rounds=2)
    with read_only_copy(d, tmp_path / "ro") as ro:
        assert not os.access(ro, os.W_OK)
        rc, out, err = run(capsys, "checkpoint", "ls", "--json", "--dir", str(ro))
        assert rc == 0, err
        assert out.count('"round"') == 2
        rc, out, err = run(capsys, "checkpoint", "inspect", "--round", "2", "--dir", str(ro))
        assert rc == 0 and cids[2] in out, err
        rc, out, err = run(capsys, "checkpoint", "verify", "--dir", str(ro))
        assert rc == 0 and "all intact" in out, err
        out_file = tmp_path / "round1.npz"
        rc, out, err = run(
            capsys, "checkpoint", "load", "--round", "1", "--out", str(out_file), "--dir", str(ro)
        )
        assert rc == 0 and out_file.is_file(), err
        rc, out, err = run(
            capsys, "catalog", "sql", "--dir", str(ro), "SELECT count(*) FROM checkpoints"
        )
        assert rc == 0 and "2" in out, err
        rc, out, err = run(capsys, "catalog", "rounds", "--dir", str(ro))
        assert rc == 0, err
        rc, out, err = run(capsys, "db", "current", "--dir", str(ro))
        assert rc == 0 and "up to date" in out, err

        for argv in (
            ["checkpoint", "save", "--round", "3", "--weights", str(weights_file(tmp_path))],
            ["checkpoint", "prune", "--keep", "1"],
        ):
            rc, _out, err = run(capsys, *argv, "--dir", str(ro))
            assert rc == 1, argv
            line = one_line_error(err)
            assert "read-only" in line and "not a readable SQLite database" not in line
        with pytest.raises(CatalogError, match="read-only"):
            LocalStore(ro)
        with LocalStore(ro, read_only=None) as store:
            assert store.read_only and store.list_rounds() == [1, 2]
            with pytest.raises(CatalogError, match="read-only"):
                store.save(3, weights(3))


# ------------------------------------------------------------------ paths SQLite could misread


@pytest.mark.parametrize("name", ["a?b", "a#b", "a%3Fb", "sp ace"])
def test_catalog_paths_with_uri_characters_open_the_file_they_name(
    tmp_path: Path, name: str
) -> None:
    d = tmp_path / name
    with Catalog.open(d) as cat:
        cat.upsert_peer("12D3KooWpeer")
        assert cat.path == d / "catalog.sqlite"
    assert (d / "catalog.sqlite").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing created elsewhere
    with Catalog.open(d) as cat:
        assert cat.get_peer("12D3KooWpeer") is not None
    with LocalStore(d) as store:  # the store (and its reconcile) agree
        store.save(1, weights(1))
        assert store.list_rounds() == [1]
