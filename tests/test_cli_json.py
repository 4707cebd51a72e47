"""``--json`` on every command that prints data: the audit, and the outputs parse.

Commands that print no data of their own are listed with the reason; any
new command must either take ``--json`` or join that list.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from fedstore.cli import build_parser, main
from fedstore.format.weight_files import save_weights_file

#: Leaf commands without --json, and why.
NO_JSON = {
    "demo": "a live view and a report file (summary.json in --out), as simulate",
    "demo weights": "a walkthrough for people",
    "node": "KEY=value status lines are its machine format (docs/NODE.md)",
    "daemon": "KEY=value status lines are its machine format",
    "config example": "writes a .env template",
    "db schema": "prints SQL",
    "bench": "--json PATH writes the JSON report",
    "completion": "prints a shell script",
    "aggregate": "--log-json: one JSON object per event on stdout",
    "train": "--log-json: one JSON object per event on stdout",
    "simulate": "a live view and a report file (summary.json in --out)",
}


def _leaves(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    out: dict[str, argparse.ArgumentParser] = {}
    if path and not subs[0].required:  # a command that also runs without a subcommand
        out[path] = parser
    for name, sub in subs[0].choices.items():
        out.update(_leaves(sub, f"{path} {name}".strip()))
    return out


def test_every_command_that_prints_data_takes_json() -> None:
    missing = []
    for path, parser in _leaves(build_parser()).items():
        has = any("--json" in a.option_strings for a in parser._actions)
        if not has and path not in NO_JSON:
            missing.append(path)
    assert missing == []
    assert all(p in _leaves(build_parser()) for p in NO_JSON)  # the list stays true


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDSTORE_BACKENDS", "filesystem")
    monkeypatch.setenv("FEDSTORE_FS_ROOT", str(tmp_path / "fsroot"))
    monkeypatch.delenv("FEDSTORE_DIR", raising=False)
    return tmp_path


def _json(capsys: pytest.CaptureFixture[str], *argv: str, rc: int = 0) -> object:
    assert main(list(argv)) == rc
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    try:
        return json.loads(out)
    except ValueError:
        return [json.loads(line) for line in lines]


def test_the_json_outputs_parse(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = env / "w.npz"
    save_weights_file(weights, {"w": np.arange(1000, dtype=np.float32)})
    d = ["--dir", str(env / "node")]

    saved = _json(capsys, "checkpoint", "save", "--round", "2", "--weights", str(weights),
                  *d, "--json")  # fmt: skip
    assert isinstance(saved, dict) and saved["round"] == 2
    cid = saved["cid"]
    loaded = _json(capsys, "checkpoint", "load", "--out", str(env / "o.npz"), *d, "--json")
    assert loaded == {"round": 2, "cid": cid, "verified": True, "out": str(env / "o.npz"),
                      "arrays": 1, "parameters": 1000}  # fmt: skip
    verified = _json(capsys, "checkpoint", "verify", *d, "--json")
    assert isinstance(verified, dict) and verified["intact"] and verified["checked"] == 1
    pruned = _json(capsys, "checkpoint", "prune", "--keep", "1", *d, "--json")
    assert pruned == {"deleted": [], "kept": [2]}
    rebuilt = _json(capsys, "db", "rebuild", "--force", *d, "--json")
    assert isinstance(rebuilt, dict) and rebuilt["recorded"] == [{"round": 2, "cid": cid}]
    assert rebuilt["skipped"] == [] and any(".lost-" in m for m in rebuilt["moved"])

    current = _json(capsys, "db", "current", *d, "--json")
    assert isinstance(current, dict) and current["status"] == "current"
    history = _json(capsys, "db", "history", "--json")
    assert isinstance(history, list) and history[0]["head"] and history[-1]["revision"] == "0001"
    upgraded = _json(capsys, "db", "upgrade", *d, "--json")
    assert isinstance(upgraded, dict) and upgraded["changed"] is False

    put = _json(capsys, "put", str(weights), "--json")
    assert isinstance(put, dict) and put["stored_on"] == "filesystem"
    assert put["copies"] == ["filesystem"] and put["attempts"][0]["ok"] is True
    got = _json(capsys, "get", put["cid"], "-o", str(env / "back.npz"), "--json")
    assert got == {"cid": put["cid"], "size": weights.stat().st_size, "backend": "filesystem",
                   "path": str(env / "back.npz"), "verified": True}  # fmt: skip
    assert (env / "back.npz").read_bytes() == weights.read_bytes()
    assert main(["get", put["cid"], "-o", "-", "--json"]) == 2  # stdout is the data there
    capsys.readouterr()

    cid_doc = _json(capsys, "cid", str(weights), "--json")
    assert isinstance(cid_doc, dict) and cid_doc["cid"] == put["cid"]

    backends = _json(capsys, "backends", "--no-health", "--json")
    assert isinstance(backends, dict) and backends["default_chain"] == ["filesystem"]
    names = {b["name"] for b in backends["backends"]}
    assert {"filesystem", "bitswap"} <= names

    retried = _json(capsys, "pins", "retry", *d, "--json")  # the save never used the chain
    assert isinstance(retried, dict)  # one attempt: one JSON line
    assert (retried["backend"], retried["state"]) == ("filesystem", "pinned")
