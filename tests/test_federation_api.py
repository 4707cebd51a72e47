"""The user-facing API over real nodes in one process, and the optional PyTorch adapter."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio

from fedstore.errors import ConfigError
from fedstore.federation import api
from fedstore.federation.events import (
    Event,
    FederationResult,
    RoundClosed,
    TrainerSynced,
    TrainerUpdated,
)
from fedstore.federation.strategies import FedAvg

MODEL = {"w": np.zeros((16, 4), np.float32), "b": np.zeros(4, np.float32)}


def add_one(
    arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Mapping[str, object]
) -> tuple[dict[str, npt.NDArray[np.generic]], int, dict[str, float]]:
    return {k: v + np.float32(1.0) for k, v in arrays.items()}, 7, {"round": float(rnd)}


def mean_weight(arrays: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, float]:
    return {"mean": float(np.mean(arrays["w"]))}


@pytest.mark.slow
async def test_aggregate_and_train_over_real_nodes(tmp_path: Path) -> None:
    settings = {"FEDSTORE_FS_ROOT": str(tmp_path / "objects")}
    agg_cfg = api.make_node_config(
        role="bootstrap",
        data_dir=tmp_path / "agg",
        backends=["filesystem"],
        settings=settings,
        environ={},
    )
    agg_events: list[Event] = []
    trainer_events: list[Event] = []
    ready = trio.Event()
    addr: list[str] = []

    def on_ready(a: str) -> None:
        addr.append(a)
        ready.set()

    results: dict[str, Any] = {}
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:

            async def aggregator() -> None:
                results["agg"] = await api.aggregate(
                    MODEL,
                    evaluate=mean_weight,
                    rounds=2,
                    quorum=1,
                    node=agg_cfg,
                    on_event=agg_events.append,
                    on_ready=on_ready,
                )

            nursery.start_soon(aggregator)
            await ready.wait()
            trainer_cfg = api.make_node_config(
                role="trainer",
                data_dir=tmp_path / "t1",
                bootstrap=addr,
                backends=["filesystem"],
                settings=settings,
                environ={},
            )
            results["t1"] = await api.train(
                add_one, node=trainer_cfg, on_event=trainer_events.append, idle_timeout=30
            )

    agg, t1 = results["agg"], results["t1"]
    assert agg.status == "complete" and t1.status == "complete"
    assert t1.final_cid == agg.final_cid and t1.rounds_trained == (1, 2)
    closed = [e for e in agg_events if isinstance(e, RoundClosed)]
    assert [e.metrics["mean"] for e in closed] == [1.0, 2.0]
    assert [e.round for e in trainer_events if isinstance(e, TrainerUpdated)] == [1, 2]
    assert any(isinstance(e, TrainerSynced) and e.round == 2 for e in trainer_events)
    # the trainer's own store and catalog hold the final global model
    from fedstore.store import AsyncLocalStore

    store = await AsyncLocalStore.open(tmp_path / "t1")
    try:
        latest = await store.latest()
        assert latest is not None and (latest.round, latest.cid) == (2, agg.final_cid)
        ckpt = await store.load(2)
        assert np.all(ckpt.arrays["w"] == 2.0)
        assert ckpt.metadata["fedstore.round"] == "2"
    finally:
        await store.aclose()
    # the aggregator's catalog holds each round's metrics by source, and the view shows them
    from fedstore.catalog import Catalog

    with Catalog.open(tmp_path / "agg") as cat:
        rows = cat.round_metrics()
        summary = cat.read_only_query(
            "SELECT round, cid, participants, num_samples, trainer_metrics, evaluate_metrics, "
            "stored_locally FROM round_summary ORDER BY round"
        ).rows
    assert [(r.round, r.source, r.name, r.value) for r in rows] == [
        (1, "evaluate", "mean", 1.0),
        (1, "trainers", "round", 1.0),
        (2, "evaluate", "mean", 2.0),
        (2, "trainers", "round", 2.0),
    ]
    assert summary == [
        (1, closed[0].cid, 1, 7, "round=1.0", "mean=1.0", 1),
        (2, agg.final_cid, 1, 7, "round=2.0", "mean=2.0", 1),
    ]
    # ... and `fedstore catalog sql` reads the view
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedstore",
            "catalog",
            "sql",
            "SELECT round, trainer_metrics FROM round_summary ORDER BY round",
            "--json",
            "--dir",
            str(tmp_path / "agg"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"round": 1, "trainer_metrics": "round=1.0"},
        {"round": 2, "trainer_metrics": "round=2.0"},
    ]


async def _federation(
    tmp_path: Path, rounds: int, strategy: str, *, train_dir: str
) -> tuple[FederationResult, list[Event]]:
    """An aggregator on ``tmp_path/agg`` and one trainer on ``train_dir`` over real nodes."""
    settings = {"FEDSTORE_FS_ROOT": str(tmp_path / "objects")}
    agg_cfg = api.make_node_config(
        role="bootstrap",
        data_dir=tmp_path / "agg",
        backends=["filesystem"],
        settings=settings,
        environ={},
    )
    events: list[Event] = []
    ready = trio.Event()
    addr: list[str] = []
    out: list[FederationResult] = []

    def on_ready(a: str) -> None:
        addr.append(a)
        ready.set()

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:

            async def aggregator() -> None:
                out.append(
                    await api.aggregate(
                        MODEL,
                        rounds=rounds,
                        strategy=strategy,
                        strategy_settings={"lr": 0.5},
                        node=agg_cfg,
                        on_event=events.append,
                        on_ready=on_ready,
                    )
                )

            nursery.start_soon(aggregator)
            await ready.wait()
            trainer_cfg = api.make_node_config(
                role="trainer",
                data_dir=tmp_path / train_dir,
                bootstrap=addr,
                backends=["filesystem"],
                settings=settings,
                environ={},
            )
            await api.train(add_one, node=trainer_cfg, idle_timeout=30)
    return out[0], events


@pytest.mark.slow
async def test_fedadam_state_survives_a_restart_over_real_nodes(tmp_path: Path) -> None:
    """A restarted aggregator node finds the optimiser state through its catalog and chain."""
    from fedstore.catalog import Catalog
    from fedstore.federation.global_model import read_strategy_record
    from fedstore.ipld import verify_bytes
    from fedstore.store import AsyncLocalStore

    first, _ = await _federation(tmp_path, 2, "fedadam", train_dir="t1")
    assert first.status == "complete" and first.final_round == 2
    second, events = await _federation(tmp_path, 3, "fedadam", train_dir="t2")
    assert second.status == "complete"
    assert [e.round for e in events if isinstance(e, RoundClosed)] == [3]
    store = await AsyncLocalStore.open(tmp_path / "agg")
    try:
        metas = {r: (await store.load(r)).metadata for r in (1, 2, 3)}
    finally:
        await store.aclose()
    records = {r: read_strategy_record(m) for r, m in metas.items()}
    # the step counter went on from the stored state: 3, not 1
    assert [records[r].state_values for r in (1, 2, 3)] == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert metas[3]["fedstore.base_cid"] == first.final_cid
    assert json.loads(metas[3]["fedstore.strategy.settings"])["lr"] == 0.5
    # every round's state blob is in the backend's store under its CID
    stored = {p.name: p for p in (tmp_path / "objects").rglob("*") if p.is_file()}
    for r in (1, 2, 3):
        state_cid = records[r].state_cid
        assert state_cid is not None and state_cid in stored
        verify_bytes(state_cid, stored[state_cid].read_bytes())
    with Catalog.open(tmp_path / "agg") as cat:
        assert [m.round for m in cat.round_metrics(source="strategy")] == [1, 2, 3]


def test_unknown_strategy_fails_before_the_node_starts(tmp_path: Path) -> None:
    from fedstore.errors import StrategyError

    with pytest.raises(StrategyError, match="unknown strategy 'krum'; installed strategies: "):
        api.run_aggregator(MODEL, strategy="krum", data_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="strategy_settings go with a strategy name"):
        api.run_aggregator(
            MODEL, strategy=FedAvg(), strategy_settings={"x": 1}, data_dir=tmp_path / "a"
        )


def test_trainer_needs_a_bootstrap_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        api.run_trainer(add_one, data_dir=tmp_path / "t", backends=["filesystem"])


def test_rounds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rounds"):
        api.run_aggregator(MODEL, rounds=0, data_dir=tmp_path / "a")


class _FakeTensor:
    """Just enough of torch.Tensor for the adapter."""

    def __init__(self, arr: npt.NDArray[np.generic], device: str = "cpu") -> None:
        self.arr = arr
        self.device = device
        self.dtype = arr.dtype

    def detach(self) -> _FakeTensor:
        return self

    def cpu(self) -> _FakeTensor:
        return _FakeTensor(self.arr, "cpu")

    def numpy(self) -> npt.NDArray[np.generic]:
        return self.arr

    def to(self, *, device: str, dtype: Any) -> _FakeTensor:
        return _FakeTensor(self.arr.astype(dtype), device)


def test_state_dict_adapter_with_a_fake_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torch")
    fake.from_numpy = lambda a: _FakeTensor(a)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    sd = {"w": _FakeTensor(np.arange(6, dtype=np.float32).reshape(2, 3), device="meta")}
    arrays = api.arrays_from_state_dict(sd)
    assert arrays["w"].shape == (2, 3) and arrays["w"].dtype == np.float32
    back = api.state_dict_from_arrays(
        {"w": arrays["w"] * 2}, like={"w": _FakeTensor(np.zeros((2, 3), np.float16), device="meta")}
    )
    assert back["w"].device == "meta" and back["w"].dtype == np.float16
    assert np.array_equal(back["w"].arr, (np.arange(6).reshape(2, 3) * 2).astype(np.float16))


def test_state_dict_adapter_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match="PyTorch"):
        api.arrays_from_state_dict({})
