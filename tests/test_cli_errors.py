"""Bad input on the command line gets a one-line error, never a traceback, and loses nothing.

Rounds, configuration files that are not what they claim, output paths, and
``get -o -``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedstore.cli import main
from fedstore.format.weight_files import load_weights_file, save_weights_file
from fedstore.node.driver import python_env
from fedstore.p2p.messages import MAX_ROUND, WireFormatError, parse_announcement, parse_round
from fedstore.store import LocalStore

FEDSTORE = [sys.executable, "-m", "fedstore"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("FEDSTORE_CONFIG", raising=False)
    monkeypatch.delenv("FEDSTORE_ENV_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.npz"
    save_weights_file(path, {"w": np.arange(6, dtype=np.float32)})
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ rounds


@pytest.mark.parametrize(
    "text",
    [
        "-1",
        str(10**29),
        str(MAX_ROUND + 1),
        "\u0663",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
        "\uff13",  # FULLWIDTH DIGIT THREE
        "\u00b2",  # SUPERSCRIPT TWO: isdigit() but int() refuses it
        "+3",
        "1_000",
        " 3",
        "",
        "3.0",
        "0x10",
    ],
)
def test_save_refuses_rounds_that_are_not_ascii_digits_within_the_wire_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path, text: str
) -> None:
    node = tmp_path / "node"
    rc, out, err = run(
        capsys, "checkpoint", "save", "--round", text, "--weights", str(weights), "--dir", str(node)
    )
    assert rc == 2 and out == ""
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1].startswith("fedstore checkpoint save: error: argument --round")
    )
    assert not (node / "rounds").exists() or not any((node / "rounds").iterdir())


def test_rounds_up_to_the_wire_limit_are_saved_and_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path
) -> None:
    node = tmp_path / "node"
    for r in ("0", "007", str(MAX_ROUND)):
        rc, _out, err = run(
            capsys,
            "checkpoint",
            "save",
            "--round",
            r,
            "--weights",
            str(weights),
            "--dir",
            str(node),
        )
        assert rc == 0, err
    with LocalStore(node) as store:
        assert store.list_rounds() == [0, 7, MAX_ROUND]
    # the highest round saved is one an announcement can carry
    assert (
        parse_announcement(
            f"CID:{MAX_ROUND}:QmNbLVc7DnQvVDWCPFGb38mJJbVjnCejQGB17U6aWAYBuZ".encode()
        ).round
        == MAX_ROUND
    )


@pytest.mark.parametrize("command", ["inspect", "load"])
def test_reading_a_huge_round_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path, command: str
) -> None:
    node = tmp_path / "node"
    assert run(capsys, "checkpoint", "save", "--round", "1", "--weights", str(weights),
               "--dir", str(node))[0] == 0  # fmt: skip
    extra = ["--out", str(tmp_path / "o.npz")] if command == "load" else []
    rc, _out, err = run(
        capsys, "checkpoint", command, "--round", str(10**23), "--dir", str(node), *extra
    )
    assert rc == 2 and "Traceback" not in err and "OverflowError" not in err
    assert f"above {MAX_ROUND}" in err


def test_parse_round_is_the_one_grammar() -> None:
    assert parse_round("0") == 0 and parse_round("0042") == 42
    assert parse_round(str(MAX_ROUND)) == MAX_ROUND
    for bad in ("\u0663", "-0", "1e3", "9" * 5000, str(MAX_ROUND + 1)):
        with pytest.raises(ValueError):
            parse_round(bad)
    cid = "QmNbLVc7DnQvVDWCPFGb38mJJbVjnCejQGB17U6aWAYBuZ"
    for bad in ("\u0663", "\uff13", f"{MAX_ROUND + 1}"):  # the wire parser agrees
        with pytest.raises(WireFormatError) as info:
            parse_announcement(f"CID:{bad}:{cid}".encode())
        assert info.value.reason == "bad_round"


def test_the_store_refuses_rounds_peers_cannot_be_told_of(tmp_path: Path) -> None:
    with LocalStore(tmp_path / "n") as store:
        with pytest.raises(ValueError, match="at most"):
            store.save(MAX_ROUND + 1, {"w": np.zeros(2, np.float32)})
        with pytest.raises(LookupError):  # CheckpointNotFoundError, not OverflowError
            store.get(10**23)
        assert store.list_rounds() == []


@pytest.mark.slow
@pytest.mark.multiprocess
def test_node_prompt_rounds_are_ascii_digits(tmp_path: Path) -> None:
    script = tmp_path / "cmds.txt"
    script.write_text("checkpoint_save \u0663\ncheckpoint_save \u00b2\ncheckpoint_save 3\nrounds\n")
    proc = subprocess.run(
        [*FEDSTORE, "node", "--dir", str(tmp_path / "n"), "--script", str(script)],
        capture_output=True,
        text=True,
        env=python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs"),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("FAILED=checkpoint_save") == 2
    assert "ROUNDS=3" in lines  # only the ASCII round was saved


# ------------------------------------------------------------------ configuration files


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        (".env", b"CHECKPOINT_DIR=\xff\xfe\n", "not UTF-8"),
        ("fedstore.toml", b'checkpoint_dir = "\xff"\n', "not UTF-8"),
        ("fedstore.toml", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests"),
        ("fedstore.toml", b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n", "nests"),
        ("fedstore.toml", b"[" + b".".join([b"a"] * 3000) + b"]\nx = 1\n", "nests"),
    ],
)
def test_unreadable_config_files_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, data: bytes, words: str
) -> None:
    _write(tmp_path / name, data)
    rc, _out, err = run(capsys, "checkpoint", "ls")
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("fedstore: error: ") and words in err
    assert name in err


# ------------------------------------------------------------------ output paths


def test_load_into_a_directory_names_the_users_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path
) -> None:
    node = tmp_path / "node"
    assert run(capsys, "checkpoint", "save", "--round", "1", "--weights", str(weights),
               "--dir", str(node))[0] == 0  # fmt: skip
    target = tmp_path / "out.npz"
    target.mkdir()
    rc, _out, err = run(capsys, "checkpoint", "load", "--out", str(target), "--dir", str(node))
    assert rc == 1
    assert err == f"fedstore: error: cannot write {target}: it is a directory (give a file name)\n"
    assert ".tmp" not in err
    assert list(target.iterdir()) == [] and not list(tmp_path.glob(".out.npz*"))


def test_load_write_failure_names_the_users_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, weights: Path
) -> None:
    node = tmp_path / "node"
    assert run(capsys, "checkpoint", "save", "--round", "1", "--weights", str(weights),
               "--dir", str(node))[0] == 0  # fmt: skip
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked / "w.npz"
        rc, _out, err = run(capsys, "checkpoint", "load", "--out", str(target), "--dir", str(node))
    finally:
        locked.chmod(0o700)
    if rc == 0:  # root ignores directory permissions
        assert load_weights_file(target)["w"].tolist() == list(range(6))
        return
    assert rc == 1 and f"cannot write {target}:" in err and ".tmp" not in err


# ------------------------------------------------------------------ get -o -


def test_get_dash_streams_verified_bytes_to_stdout(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: several UnixFS chunks
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    env = python_env(root=tmp_path / "fs")
    put = subprocess.run(
        [*FEDSTORE, "put", str(src), "--backend", "filesystem"],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    cid = put.stdout.decode().strip()
    get = subprocess.run(
        [*FEDSTORE, "get", cid, "-o", "-", "--backend", "filesystem"],
        capture_output=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert get.returncode == 0, get.stderr
    assert get.stdout == data
    assert b"verified" in get.stderr
    assert not (tmp_path / "-").exists()


def test_get_dash_writes_nothing_when_verification_fails(tmp_path: Path) -> None:
    data = b"honest bytes " * 1000
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    env = python_env(root=tmp_path / "fs")
    put = subprocess.run(
        [*FEDSTORE, "put", str(src), "--backend", "filesystem"],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    cid = put.stdout.decode().strip()
    stored = [p for p in (tmp_path / "fs").rglob("*") if p.is_file() and p.stat().st_size]
    assert stored
    for p in stored:  # corrupt the stored object(s) in place
        p.write_bytes(p.read_bytes().replace(b"honest", b"forged"))
    get = subprocess.run(
        [*FEDSTORE, "get", cid, "-o", "-", "--backend", "filesystem"],
        capture_output=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert get.returncode == 1
    assert get.stdout == b""  # nothing unverified reached the reader
    assert b"Traceback" not in get.stderr
    assert not (tmp_path / "-").exists()
