"""Aggregation is deterministic: another process re-running it gets the same bytes and CID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedstore.demos.digits_task import DigitsConfig, DigitsTask
from fedstore.federation.global_model import aggregate_round, encode_global
from fedstore.federation.messages import encode_tensors
from fedstore.federation.strategies import RoundContext, Update, available_strategies
from fedstore.federation.strategies import load_strategy as _load
from fedstore.federation.strategies.base import NDArray
from fedstore.ipld.cid import cid_of_bytes

BASE_CID = cid_of_bytes(b"round 0")
BASE = DigitsTask(4, DigitsConfig(hidden=16, epochs=1)).initial_arrays()

# The other process: decode the base and the updates from files, take the
# updates in REVERSED order, aggregate, encode, print one CID per strategy.
CHILD = r"""
import json, sys
from pathlib import Path
from fedstore.ipld.cid import cid_of_bytes
from fedstore.federation.global_model import aggregate_round, encode_global
from fedstore.federation.strategies import RoundContext, Update, load_strategy
from fedstore.format import decode

d = Path(sys.argv[1])
manifest = json.loads((d / "manifest.json").read_text())
base = decode((d / "base.fsck").read_bytes()).arrays
updates = []
for row in reversed(manifest["updates"]):
    arrays = decode((d / row["file"]).read_bytes()).arrays
    updates.append(Update(row["sender"], row["num_samples"], arrays))
out = {}
for name in manifest["strategies"]:
    ctx = RoundContext(manifest["round"], manifest["base_cid"], base)
    data = encode_global(aggregate_round(load_strategy(name), ctx, updates, extra={}))
    out[name] = cid_of_bytes(data)
print(json.dumps(out))
"""


def aggregate_bytes(
    name: str,
    round: int,
    base_cid: str,
    updates: list[Update],
    extra: dict[str, str],
    base: dict[str, NDArray] = BASE,
) -> tuple[dict[str, str], bytes]:
    """The strategy's global checkpoint for the round: (metadata, encoded bytes)."""
    outcome = aggregate_round(
        _load(name), RoundContext(round, base_cid, base), updates, extra=extra
    )
    return outcome.metadata, encode_global(outcome)


@pytest.fixture(scope="module")
def updates() -> list[Update]:
    task = DigitsTask(4, DigitsConfig(hidden=16, epochs=1))
    start = task.initial_arrays()
    senders = [
        "12D3KooWQzSDkGyiKPnGMGcb7fXnf17oq1HeKbSNyvvX7SKFkwSj",
        "12D3KooWAv3S9SznRGmpDptA3qXgb8J27sx9VSARvpqRLhZGEZYx",
        "12D3KooWRPhQJs3ntLGEkVujSRgPknH5AXh1TA23EonZrbUGaDX7",
        "12D3KooWGDa7ghcoaNNXHHo3zXFCwuZfDLU3Eum3NPoXqgUqKRa6",
    ]
    out = []
    for i, sender in enumerate(senders, start=1):
        arrays, n, _ = task.trainer(i)(start, 1, {})
        out.append(Update(sender, n, arrays))
    return out


@pytest.mark.multiprocess
def test_same_cid_in_another_process(updates: list[Update], tmp_path: Path) -> None:
    rows = []
    for i, u in enumerate(updates):
        name = f"update-{i}.fsck"
        (tmp_path / name).write_bytes(encode_tensors(u.arrays))
        rows.append({"file": name, "sender": u.sender, "num_samples": u.num_samples})
    strategies = sorted(available_strategies())
    assert {"fedavg", "median", "trimmed-mean"} <= set(strategies)
    (tmp_path / "base.fsck").write_bytes(encode_tensors(BASE))
    (tmp_path / "manifest.json").write_text(
        json.dumps({"updates": rows, "round": 1, "base_cid": BASE_CID, "strategies": strategies})
    )
    here = {}
    for name in strategies:
        _, data = aggregate_bytes(name, 1, BASE_CID, updates, {})
        here[name] = cid_of_bytes(data)
    assert len(set(here.values())) == len(strategies), "strategies should differ"

    env = dict(os.environ, PYTHONHASHSEED="12345", OPENBLAS_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    there = json.loads(proc.stdout)
    assert there == here


def test_arrival_order_does_not_change_the_bytes(updates: list[Update]) -> None:
    rng = np.random.default_rng(7)
    ref = aggregate_bytes("fedavg", 3, BASE_CID, updates, {"k": "v"})[1]
    for _ in range(5):
        order = [updates[i] for i in rng.permutation(len(updates))]
        assert aggregate_bytes("fedavg", 3, BASE_CID, order, {"k": "v"})[1] == ref


def test_metadata_names_round_base_and_participants(updates: list[Update]) -> None:
    from fedstore.format import decode

    meta, data = aggregate_bytes("median", 4, BASE_CID, updates, {"fedstore.task": "x"})
    assert decode(data).metadata == meta
    assert meta["fedstore.round"] == "4"
    assert meta["fedstore.base_cid"] == BASE_CID
    assert meta["fedstore.participants"].split(",") == sorted(u.sender for u in updates)
    assert meta["fedstore.strategy"] == "median"
    assert meta["fedstore.task"] == "x"
    # a different base or round is a different checkpoint
    other = aggregate_bytes("median", 5, BASE_CID, updates, {"fedstore.task": "x"})[1]
    assert cid_of_bytes(other) != cid_of_bytes(data)
