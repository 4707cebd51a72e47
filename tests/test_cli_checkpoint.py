"""CLI: fedstore checkpoint / catalog / db commands and ``fedstore demo weights``."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedstore.catalog import migrate
from fedstore.cli import main
from fedstore.format.weight_files import load_weights_file, save_weights_file


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapping of CIDs
    monkeypatch.delenv("CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("FEDSTORE_CATALOG_AUTO_UPGRADE", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env / fedstore.toml, default dirs land here


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(size=(10, 36)).astype(np.float32),
        "fc.bias": np.arange(10, dtype=np.int64),
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def save_rounds(capsys: pytest.CaptureFixture[str], d: Path, tmp: Path, n: int) -> None:
    for r in range(1, n + 1):
        suffix = ".npz" if r % 2 else ".safetensors"
        f = tmp / f"w{r}{suffix}"
        save_weights_file(f, arrays(r))
        rc, out, err = run(
            capsys, "checkpoint", "save", "--round", str(r), "--weights", str(f), "--dir", str(d)
        )
        assert rc == 0, err
        assert out.startswith(f"saved round {r}: Qm")


def test_save_ls_load_inspect_prune(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "node"
    save_rounds(capsys, d, tmp_path, 3)

    rc, out, _ = run(capsys, "checkpoint", "ls", "--dir", str(d))
    assert rc == 0 and "latest round: 3" in out
    rc, out, _ = run(capsys, "checkpoint", "ls", "--json", "--dir", str(d))
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["status"] == "ok" for r in rows)
    assert f"CID: {rows[-1]['cid']}" in run(capsys, "checkpoint", "ls", "--dir", str(d))[1]

    for out_name, rnd in (("latest.safetensors", None), ("r1.npz", "1"), ("r2.fsck", "2")):
        target = tmp_path / out_name
        argv = ["checkpoint", "load", "--out", str(target), "--dir", str(d)]
        if rnd:
            argv += ["--round", rnd]
        rc, out, err = run(capsys, *argv)
        assert rc == 0, err
        loaded = load_weights_file(target)
        expected = arrays(int(rnd) if rnd else 3)
        assert sorted(loaded) == sorted(expected)
        for k in expected:
            np.testing.assert_array_equal(loaded[k], expected[k])

    rc, out, _ = run(capsys, "checkpoint", "inspect", "--round", "2", "--dir", str(d))
    assert rc == 0
    assert rows[1]["cid"] in out and "verified" in out
    assert "fc.weight" in out and "[10, 36]" in out and "float32" in out and "int64" in out
    assert f"{36 + 360 + 10:,} in 3 tensors" in out
    rc, out, _ = run(capsys, "checkpoint", "inspect", "--json", "--dir", str(d))
    info = json.loads(out)
    assert info["round"] == 3 and info["parameter_count"] == 406 and info["cid"] == rows[2]["cid"]

    rc, out, _ = run(capsys, "checkpoint", "prune", "--keep", "1", "--dir", str(d))
    assert rc == 0 and "deleted rounds 1, 2" in out and "kept rounds 3" in out
    rc, out, _ = run(capsys, "checkpoint", "verify", "--dir", str(d))
    assert rc == 0 and "all intact" in out


def test_save_metadata_conflict_and_replace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "node"
    f1, f2 = tmp_path / "a.npz", tmp_path / "b.npz"
    save_weights_file(f1, arrays(1))
    save_weights_file(f2, arrays(2))
    base = ["checkpoint", "save", "--round", "7", "--dir", str(d)]
    assert run(capsys, *base, "--weights", str(f1), "--meta", "task=digits")[0] == 0
    rc, _, err = run(capsys, *base, "--weights", str(f2))
    assert rc == 1 and "round 7 already has checkpoint" in err and "--replace" in err
    rc, out, _ = run(capsys, *base, "--weights", str(f2), "--replace")
    assert rc == 0
    rc, _, err = run(capsys, *base, "--weights", str(f1), "--meta", "novalue")
    assert rc == 1 and "KEY=VALUE" in err
    rc, _, err = run(capsys, *base, "--weights", str(tmp_path / "missing.npz"))
    assert rc == 1 and "cannot read" in err


def test_default_dir_from_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "w.npz"
    save_weights_file(f, arrays(0))
    assert run(capsys, "checkpoint", "save", "--round", "0", "--weights", str(f))[0] == 0
    assert (tmp_path / "fedstore-data" / "catalog.sqlite").is_file()
    monkeypatch.setenv("CHECKPOINT_DIR", str(tmp_path / "elsewhere"))
    assert run(capsys, "checkpoint", "save", "--round", "0", "--weights", str(f))[0] == 0
    assert (tmp_path / "elsewhere" / "catalog.sqlite").is_file()


def test_read_commands_do_not_create_a_catalog(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv in (
        ["checkpoint", "ls"],
        ["checkpoint", "inspect"],
        ["catalog", "sql", "SELECT 1"],
        ["catalog", "rounds"],
        ["db", "current"],
    ):
        rc, _, err = run(capsys, *argv, "--dir", str(tmp_path / "nothing"))
        assert rc == 1 and "no catalog at" in err
    assert not (tmp_path / "nothing").exists()


def test_catalog_sql_formats_and_refusal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "node"
    save_rounds(capsys, d, tmp_path, 2)
    q = "SELECT round, cid FROM checkpoints ORDER BY round"
    rc, out, _ = run(capsys, "catalog", "sql", q, "--json", "--dir", str(d))
    doc = json.loads(out)
    assert rc == 0 and [r["round"] for r in doc] == [1, 2] and doc[0]["cid"].startswith("Qm")
    rc, out, _ = run(capsys, "catalog", "sql", q, "--csv", "--dir", str(d))
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["round", "cid"] and [r[0] for r in table[1:]] == ["1", "2"]
    rc, out, _ = run(capsys, "catalog", "sql", "SELECT * FROM latest_checkpoint", "--dir", str(d))
    assert rc == 0 and doc[1]["cid"] in out and "1 row(s)" in out

    db = d / "catalog.sqlite"
    before = db.read_bytes()
    rc, _, err = run(capsys, "catalog", "sql", "DELETE FROM checkpoints", "--dir", str(d))
    assert rc == 1 and "refused" in err and "Nothing was changed" in err
    rc, out, _ = run(
        capsys, "catalog", "sql", "SELECT COUNT(*) AS n FROM checkpoints", "--json", "--dir", str(d)
    )
    assert json.loads(out) == [{"n": 2}]
    assert db.read_bytes() == before


def test_catalog_rounds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from fedstore.catalog import Catalog

    d = tmp_path / "node"
    save_rounds(capsys, d, tmp_path, 2)
    with Catalog.open(d) as cat:
        cat.record_announcement(3, "QmRemoteOnly", "peerA", "model-cids")
        cat.set_pin("QmRemoteOnly", "pinata", "pinned")
    rc, out, _ = run(capsys, "catalog", "rounds", "--dir", str(d))
    assert rc == 0 and "QmRemoteOnly" in out and "1 peer(s)" in out and "pinata:pinned" in out
    rc, out, _ = run(capsys, "catalog", "rounds", "--json", "--dir", str(d))
    rows = [json.loads(x) for x in out.splitlines()]
    assert [(r["round"], r["stored_locally"]) for r in rows] == [(3, False), (2, True), (1, True)]


def test_db_commands_on_an_old_catalog(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "old"
    db = d / "catalog.sqlite"
    base = list(migrate.heads())[0]
    from alembic.script import ScriptDirectory

    first = list(ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions())[-1]
    migrate.upgrade(db, first.revision)
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO checkpoints (round, cid, cid_version, codec, raw_size, stored_size, "
            "created_at, path) VALUES (1, 'QmOld', 0, 'c', 1, 1, '2026-01-01 00:00:00', 'p')"
        )
    con.close()
    rc, out, _ = run(capsys, "db", "current", "--dir", str(d))
    assert rc == 0 and f"revision: {first.revision}" in out and "out of date" in out
    monkeypatch.setenv("FEDSTORE_CATALOG_AUTO_UPGRADE", "0")
    rc, _, err = run(capsys, "catalog", "rounds", "--dir", str(d))
    assert rc == 1 and "fedstore db upgrade --dir" in err
    rc, out, _ = run(capsys, "db", "upgrade", "--dir", str(d))
    assert rc == 0 and f"{first.revision} -> {base}" in out and "backup" in out
    rc, out, _ = run(capsys, "db", "current", "--dir", str(d))
    assert f"revision: {base}" in out and "up to date" in out
    rc, out, _ = run(capsys, "db", "upgrade", "--dir", str(d))
    assert "already at revision" in out
    rc, out, _ = run(capsys, "catalog", "rounds", "--json", "--dir", str(d))
    assert [json.loads(x)["cid"] for x in out.splitlines()] == ["QmOld"]
    rc, out, _ = run(capsys, "db", "history")
    assert rc == 0 and f"{base} (head)" in out and first.revision in out


def test_db_schema_fresh_is_the_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "db", "schema", "--fresh")
    snapshot = Path(__file__).parent / "schema" / "catalog.sql"
    assert rc == 0 and out == snapshot.read_text()


def test_demo_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "demo"
    rc, out, err = run(capsys, "demo", "weights", "--dir", str(d))
    assert rc == 0, out + err
    assert "✗" not in out and out.count("✓") >= 15 and "all checks passed" in out
    assert sorted(p.name for p in (d / "rounds").iterdir())[0].startswith("round_000004_")
    # run again: it wipes its own directory and starts over
    (d / "rounds" / "leftover.fsck").write_bytes(b"x")
    rc, out, _ = run(capsys, "demo", "weights", "--dir", str(d))
    assert rc == 0 and not (d / "rounds" / "leftover.fsck").exists()


def test_demo_weights_refuses_foreign_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("do not delete")
    rc, _, err = run(capsys, "demo", "weights", "--dir", str(d))
    assert rc == 1 and "refusing to wipe" in err
    assert (d / "thesis.tex").read_text() == "do not delete"


def test_demo_weights_exits_nonzero_on_a_failed_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedstore.demos.weights as demo

    monkeypatch.setattr(demo, "_same", lambda a, b: False)  # reloads "do not match"
    rc, out, _ = run(capsys, "demo", "weights", "--dir", str(tmp_path / "demo"))
    assert rc == 1 and "✗" in out and "check(s) failed" in out
