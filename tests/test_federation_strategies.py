"""Strategies: lookup by name (entry points, out-of-tree and broken plugins), settings,
per-round config, declining, FedAdam and its state across an aggregator restart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio

from fedstore.errors import NotFoundError, StrategyError
from fedstore.federation.aggregator import lead_rounds
from fedstore.federation.events import Event, RoundClosed, RoundFailed, RoundOpened
from fedstore.federation.fake import FakeNetwork
from fedstore.federation.global_model import (
    CONFIG_KEY,
    STATE_KEY,
    read_strategy_record,
)
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.strategies import (
    Aggregate,
    BaseStrategy,
    Failure,
    FedAdam,
    RoundConfig,
    RoundContext,
    Strategy,
    TrimmedMean,
    Update,
    available_strategies,
    load_strategy,
)
from fedstore.federation.trainer import follow_rounds
from fedstore.format import decode

Arrays = dict[str, npt.NDArray[np.generic]]
MODEL: Arrays = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}
FAST: dict[str, Any] = dict(round_timeout=10.0, announce_interval=0.05, linger=0.2)
REPO = Path(__file__).resolve().parents[1]


def shift(delta: float, samples: int = 10, seen: list[tuple[int, dict[str, Any]]] | None = None):  # type: ignore[no-untyped-def]
    """A training function adding ``delta`` to every weight, recording the configs it got."""

    def train(arrays: Arrays, rnd: int, config: RoundConfig):  # type: ignore[no-untyped-def]
        if seen is not None:
            seen.append((rnd, dict(config)))
        out = {k: (v + np.float32(delta)).astype(v.dtype) for k, v in arrays.items()}
        return out, samples, {"loss": 1.0 / rnd, "delta": delta}

    return train


async def federate(
    net: FakeNetwork,
    settings: AggregatorSettings,
    trainers: Mapping[str, Any],
    *,
    aggregator: str = "agg",
    events: list[Event] | None = None,
) -> Any:
    async with trio.open_nursery() as nursery:
        for name, fn in trainers.items():
            nursery.start_soon(follow_rounds, net.peer(name), fn, TrainerSettings(idle_timeout=5))
        return await lead_rounds(
            net.peer(aggregator),
            MODEL,
            settings,
            on_event=(events.append if events is not None else lambda e: None),
        )


# -- lookup by name -----------------------------------------------------------------------


def test_builtins_are_registered_entry_points() -> None:
    infos = available_strategies()
    assert {"fedavg", "median", "trimmed-mean", "fedadam"} <= set(infos)
    assert infos["trimmed-mean"].target == "fedstore.federation.strategies.builtin:TrimmedMean"
    assert infos["fedavg"].distribution == "fedstore"
    for name in ("fedavg", "median", "trimmed-mean", "fedadam"):
        s = load_strategy(name)
        assert isinstance(s, Strategy) and s.name == name


def test_unknown_name_lists_installed() -> None:
    with pytest.raises(StrategyError) as info:
        load_strategy("krum")
    msg = str(info.value)
    assert "unknown strategy 'krum'" in msg
    for name in available_strategies():
        assert name in msg
    assert info.value.strategy == "krum"


def test_settings_are_constructor_parameters_validated() -> None:
    assert load_strategy("trimmed-mean", {"trim": 0.1}) == TrimmedMean(trim=0.1)
    assert load_strategy("trimmed-mean", {"trim": "0.25"}).settings() == {"trim": 0.25}
    assert load_strategy("fedadam", {"lr": "0.5", "tau": 1e-4}).settings() == {
        "lr": 0.5,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-4,
    }
    cases = [
        ("trimmed-mean", {"trim": 0.5}, r"trim must be a number in \[0, 0.5\), got 0.5"),
        ("trimmed-mean", {"trim": -0.1}, "trim must be a number"),
        ("trimmed-mean", {"trim": True}, "trim must be a number"),
        ("trimmed-mean", {"trim": "a lot"}, "setting trim must be float, got 'a lot'"),
        ("trimmed-mean", {"beta": 0.2}, "has no setting 'beta'; its settings: clip, trim"),
        ("fedavg", {"trim": 0.2}, "has no setting 'trim'; its settings: clip"),
        ("median", {"clip": -1.0}, r"clip must be a number in \[0, "),
        ("fedadam", {"beta2": 1.0}, r"beta2 must be a number in \[0, 1\)"),
        ("fedadam", {"lr": 0}, r"lr must be a number in \(0, 1000\]"),
    ]
    for name, settings, match in cases:
        with pytest.raises(StrategyError, match=match):
            load_strategy(name, settings)
    with pytest.raises(ValueError, match="trim must be"):
        TrimmedMean(trim=float("nan"))


def _fake_dist(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Lay out an installed distribution's metadata the way pip does."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[fedstore.strategies]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def _run_in(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# A user's strategy, in a distribution of its own: the mean of the updates'
# largest and smallest value per coordinate, a learning rate it sends to the
# trainers and lowers every round, and a counter it carries as state.
ACME = """
import numpy as np
from fedstore.federation.strategies import Aggregate, BaseStrategy, StrategyState
from fedstore.federation.strategies.base import cast_back, ordered_updates, stack_tensor


class MidRange(BaseStrategy):
    name = "acme-midrange"

    def __init__(self, lr: float = 0.5, decay: float = 0.5) -> None:
        if not 0 < lr <= 1:
            raise ValueError(f"lr must be in (0, 1], got {lr}")
        self.lr, self.decay = float(lr), float(decay)

    def settings(self):
        return {"lr": self.lr, "decay": self.decay}

    def configure_round(self, round):
        return {"lr": self.lr * self.decay ** (round.round - 1), "tag": "acme"}

    def aggregate(self, round, updates, failures):
        ordered = ordered_updates(updates)
        out = {}
        for name in sorted(ordered[0].arrays):
            s = stack_tensor(ordered, name)
            out[name] = cast_back((s.max(axis=0) + s.min(axis=0)) * 0.5, ordered[0].arrays[name])
        seen = int(round.state.values.get("rounds", 0)) + 1
        return Aggregate(out, {"spread": float(s.max() - s.min())}, StrategyState({"rounds": seen}))


class Misnamed(MidRange):
    name = "something-else"


def not_a_strategy():
    return object()
"""


def test_out_of_tree_strategy_runs_a_federation(tmp_path: Path) -> None:
    """A third-party strategy, registered by its own distribution, found by name and used."""
    site = tmp_path / "site"
    (site / "acme_strategy").mkdir(parents=True)
    (site / "acme_strategy" / "__init__.py").write_text(ACME)
    _fake_dist(site, "acme-strategy", {"acme-midrange": "acme_strategy:MidRange"})
    proc = _run_in(
        site,
        """
        import json, trio
        import numpy as np
        from fedstore.federation.aggregator import lead_rounds
        from fedstore.federation.events import RoundClosed
        from fedstore.federation.fake import FakeNetwork
        from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
        from fedstore.federation.strategies import available_strategies, load_strategy
        from fedstore.federation.trainer import follow_rounds
        from fedstore.format import decode

        configs = []

        def trainer(delta):
            def train(arrays, rnd, config):
                configs.append([rnd, config])
                return {k: v + np.float32(delta * config["lr"]) for k, v in arrays.items()}, 1, {}
            return train

        async def main():
            net = FakeNetwork()
            strategy = load_strategy("acme-midrange", {"lr": "1.0"})
            settings = AggregatorSettings(
                rounds=2, strategy=strategy, quorum=QuorumSchedule(3),
                round_timeout=10.0, announce_interval=0.05, linger=0.2,
            )
            closed = []
            model = {"w": np.zeros(3, np.float32)}
            async with trio.open_nursery() as nursery:
                for name, d in (("a", 1.0), ("b", 2.0), ("c", 7.0)):
                    nursery.start_soon(
                        follow_rounds, net.peer(name), trainer(d), TrainerSettings(idle_timeout=5)
                    )
                result = await lead_rounds(
                    net.peer("agg"), model, settings,
                    on_event=lambda e: closed.append(e) if isinstance(e, RoundClosed) else None,
                )
            final = decode(net.blobs[result.final_cid])
            return {
                "origin": available_strategies()["acme-midrange"].distribution,
                "status": result.status,
                "w": final.arrays["w"].tolist(),
                "meta": final.metadata,
                "strategy_metrics": [dict(c.strategy_metrics) for c in closed],
                "configs": sorted(configs, key=lambda c: c[0]),
            }

        print(json.dumps(trio.run(main)))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["origin"] == "acme-strategy" and out["status"] == "complete"
    # round 1: lr 1.0, updates +1, +2, +7 -> midrange 4; round 2: lr 0.5 -> +0.5, +1, +3.5 -> +2
    assert out["w"] == [6.0, 6.0, 6.0]
    assert out["meta"]["fedstore.strategy"] == "acme-midrange"
    assert json.loads(out["meta"]["fedstore.strategy.settings"]) == {"lr": 1.0, "decay": 0.5}
    assert json.loads(out["meta"]["fedstore.round_config"]) == {"lr": 0.5, "tag": "acme"}
    assert json.loads(out["meta"]["fedstore.strategy.state"]) == {"values": {"rounds": 2}}
    assert out["strategy_metrics"] == [{"spread": 6.0}, {"spread": 3.0}]
    assert out["configs"] == [[r, {"lr": lr, "tag": "acme"}] for r, lr in [(1, 1.0)] * 3] + [
        [r, {"lr": lr, "tag": "acme"}] for r, lr in [(2, 0.5)] * 3
    ]


def test_broken_and_misdeclared_plugins_are_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "acme_strategy").mkdir(parents=True)
    (site / "acme_strategy" / "__init__.py").write_text(ACME)
    (site / "acme_broken.py").write_text("import numpy_that_does_not_exist\n")
    _fake_dist(
        site,
        "acme-strategy",
        {
            "acme-broken": "acme_broken:Strategy",
            "acme-misnamed": "acme_strategy:Misnamed",
            "acme-object": "acme_strategy:not_a_strategy",
            "acme-midrange": "acme_strategy:MidRange",
        },
    )
    proc = _run_in(
        site,
        """
        import json
        from fedstore.errors import NotFoundError, StrategyError
        from fedstore.federation.strategies import load_strategy
        out = {}
        for name, settings in [
            ("acme-broken", {}), ("acme-misnamed", {}), ("acme-object", {}),
            ("acme-midrange", {"lr": 3}), ("acme-midrange", {"lr": "fast"}),
        ]:
            try:
                load_strategy(name, settings)
                out[name + str(settings)] = "loaded"
            except StrategyError as exc:
                out[name + str(settings)] = str(exc)
        print(json.dumps(out))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["acme-broken{}"] == (
        "strategy plugin 'acme-broken' (acme_broken:Strategy) failed to load: "
        "ModuleNotFoundError: No module named 'numpy_that_does_not_exist'"
    )
    assert "makes a strategy named 'something-else'" in out["acme-misnamed{}"]
    assert "does not make a Strategy (got object" in out["acme-object{}"]
    assert out["acme-midrange{'lr': 3}"] == "strategy 'acme-midrange': lr must be in (0, 1], got 3"
    assert out["acme-midrange{'lr': 'fast'}"] == (
        "strategy 'acme-midrange': setting lr must be float, got 'fast'"
    )


def test_demo_refuses_an_unknown_strategy_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedstore", "demo", "--aggregator", "krum", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "fedstore: error: unknown strategy 'krum'; installed strategies: "
        + ", ".join(available_strategies())
    ]
    assert not any(tmp_path.iterdir()), "nothing may be started or written"


# -- the round protocol with strategies ------------------------------------------------


class Scheduled(BaseStrategy):
    """FedAvg with a learning-rate schedule in the round config; declines lone updates."""

    name = "scheduled"

    def configure_round(self, round: RoundContext) -> RoundConfig:
        return {"lr": 0.1 / round.round, "epochs": round.round, "phase": "warm"}

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        from fedstore.federation.strategies.builtin import fedavg

        if len(updates) < 2:
            return Aggregate(None, reason=f"only {len(updates)} update(s)")
        return Aggregate(fedavg(updates), {"failures": float(len(failures))})


async def test_round_config_reaches_train_and_metrics_are_combined() -> None:
    net = FakeNetwork()
    seen: list[tuple[int, dict[str, Any]]] = []
    events: list[Event] = []
    settings = AggregatorSettings(
        rounds=2, strategy=Scheduled(), quorum=QuorumSchedule(2), min_updates=2, **FAST
    )
    result = await federate(
        net, settings, {"t1": shift(1.0, 10, seen), "t2": shift(3.0, 30, seen)}, events=events
    )
    assert result.status == "complete"
    want = {
        1: {"lr": 0.1, "epochs": 1, "phase": "warm"},
        2: {"lr": 0.05, "epochs": 2, "phase": "warm"},
    }
    assert sorted(seen, key=lambda x: x[0]) == [(r, want[r]) for r in (1, 1, 2, 2)]
    opened = [e for e in events if isinstance(e, RoundOpened)]
    assert [dict(e.config) for e in opened] == [want[1], want[2]]
    closed = [e for e in events if isinstance(e, RoundClosed)]
    # trainer metrics: weighted by samples (10 and 30), per round
    assert closed[0].trainer_metrics == {"loss": 1.0, "delta": (1.0 * 10 + 3.0 * 30) / 40}
    assert closed[1].trainer_metrics == {"loss": 0.5, "delta": 2.5}
    assert closed[0].strategy_metrics == {"failures": 0.0}
    final = decode(net.blobs[result.final_cid])
    assert json.loads(final.metadata[CONFIG_KEY]) == want[2]
    assert np.all(final.arrays["w"] == np.float32(5.0))  # 2.5 per round


async def test_recorded_round_metrics_by_source() -> None:
    net = FakeNetwork()
    agg = net.peer("agg")
    settings = AggregatorSettings(
        rounds=2, strategy=load_strategy("fedadam"), quorum=QuorumSchedule(2), **FAST
    )

    async with trio.open_nursery() as nursery:
        for name, d in (("t1", 1.0), ("t2", 3.0)):
            nursery.start_soon(
                follow_rounds, net.peer(name), shift(d), TrainerSettings(idle_timeout=5)
            )
        result = await lead_rounds(
            agg, MODEL, settings, evaluate=lambda a: {"mean": float(np.mean(a["w"]))}
        )
    assert result.status == "complete"
    assert [(r.round, r.cid, r.participants, r.num_samples) for r in agg.recorded] == [
        (1, agg.saved[1].cid, ("t1", "t2"), 20),
        (2, agg.saved[2].cid, ("t1", "t2"), 20),
    ]
    first = agg.recorded[0].metrics
    assert first["trainers"] == {"loss": 1.0, "delta": 2.0}
    assert set(first["strategy"]) == {"step_norm"} and first["strategy"]["step_norm"] > 0
    assert first["evaluate"]["mean"] == pytest.approx(
        float(np.mean(decode(net.blobs[agg.saved[1].cid]).arrays["w"]))
    )


async def test_a_declined_round_is_reopened_then_fails() -> None:
    net = FakeNetwork()
    events: list[Event] = []
    settings = AggregatorSettings(
        rounds=1,
        strategy=Scheduled(),
        quorum=QuorumSchedule(1),
        max_attempts=2,
        round_timeout=2.0,
        announce_interval=0.05,
        linger=0.1,
    )
    result = await federate(net, settings, {"t1": shift(1.0)}, events=events)
    failed = [e for e in events if isinstance(e, RoundFailed)]
    assert [(e.round, e.attempt) for e in failed] == [(1, 1), (1, 2)]
    assert all(
        "strategy scheduled declined the round: only 1 update(s)" in e.reason for e in failed
    )
    assert result.status == "failed" and result.final_round == 0
    assert not any(isinstance(e, RoundClosed) for e in events)


class Broken(BaseStrategy):
    name = "broken"

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        return Aggregate({k: np.full((2, 2), np.float32(1)) for k in round.base})


async def test_a_strategy_that_breaks_the_model_is_refused() -> None:
    net = FakeNetwork()
    settings = AggregatorSettings(rounds=1, strategy=Broken(), **FAST)
    with pytest.raises(BaseExceptionGroup) as info:
        await federate(net, settings, {"t1": shift(1.0)})
    errors = info.value.exceptions
    assert any(
        isinstance(e, StrategyError) and "produced arrays that do not fit the model" in str(e)
        for e in errors
    ), errors
    assert len(net.announced) == 1  # only round 0: nothing broken was published


async def test_an_unsendable_round_config_is_a_strategy_error() -> None:
    class Chatty(BaseStrategy):
        name = "chatty"

        def configure_round(self, round: RoundContext) -> RoundConfig:
            return {"flag": True}  # type: ignore[dict-item]

    net = FakeNetwork()
    with pytest.raises(StrategyError, match="config that cannot be sent: config flag: booleans"):
        await lead_rounds(net.peer("agg"), MODEL, AggregatorSettings(rounds=1, strategy=Chatty()))


async def test_two_argument_train_still_works_with_a_warning() -> None:
    def legacy(arrays: Arrays, rnd: int):  # type: ignore[no-untyped-def]
        return {k: v + np.float32(2.0) for k, v in arrays.items()}, 5, {}

    net = FakeNetwork()
    settings = AggregatorSettings(rounds=1, **FAST)
    with pytest.warns(FutureWarning, match=r"takes \(arrays, round\); that form is deprecated"):
        result = await federate(net, settings, {"old": legacy})
    assert result.status == "complete"
    assert np.all(decode(net.blobs[result.final_cid]).arrays["w"] == 2.0)


# -- FedAdam ----------------------------------------------------------------------------


def test_fedadam_matches_its_formula_and_carries_its_moments() -> None:
    base = {"w": np.array([1.0, -2.0, 0.5], np.float32), "n": np.array([4], np.int64)}
    ups = [
        Update("a", 1, {"w": np.array([2.0, -2.0, 0.0], np.float32), "n": np.array([5])}),
        Update("b", 3, {"w": np.array([1.0, -1.0, 1.5], np.float32), "n": np.array([9])}),
    ]
    s = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    first = s.aggregate(RoundContext(1, "cid0", base), ups, ())
    assert first.arrays is not None and first.state is not None
    delta = (np.array([2.0, -2.0, 0.0]) * 1 + np.array([1.0, -1.0, 1.5]) * 3) / 4 - np.array(
        [1.0, -2.0, 0.5]
    )
    m = 0.1 * delta
    v = 0.01 * delta**2
    want = np.array([1.0, -2.0, 0.5]) + 0.1 * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(first.arrays["w"], want.astype(np.float32), rtol=1e-6)
    assert first.arrays["w"].dtype == np.float32
    assert first.arrays["n"].tolist() == [8]  # integers take FedAvg's value: (5 + 27) / 4
    assert first.state.values == {"step": 1}
    np.testing.assert_allclose(first.state.arrays["m.w"], m.astype(np.float32))
    assert first.state.arrays["v.w"].dtype == np.float32 and "m.n" not in first.state.arrays
    # round 2 starts from the carried moments, not from zero
    second = s.aggregate(RoundContext(2, "cid1", first.arrays, first.state), ups, ())
    assert second.state is not None and second.state.values == {"step": 2}
    delta2 = (np.array([2.0, -2.0, 0.0]) + np.array([1.0, -1.0, 1.5]) * 3) / 4 - first.arrays[
        "w"
    ].astype(np.float64)
    m2 = 0.9 * first.state.arrays["m.w"].astype(np.float64) + 0.1 * delta2
    np.testing.assert_allclose(second.state.arrays["m.w"], m2.astype(np.float32), rtol=1e-6)
    fresh = s.aggregate(RoundContext(2, "cid1", first.arrays), ups, ())
    assert fresh.arrays is not None
    assert fresh.arrays["w"].tobytes() != second.arrays["w"].tobytes()  # type: ignore[index]


async def test_fedadam_state_survives_an_aggregator_restart() -> None:
    """2 rounds, a new aggregator resuming from the checkpoint, 2 more: same CIDs as 4 in a row."""
    trainers = {"t1": shift(1.0, 10), "t2": shift(-0.5, 30)}

    def settings(rounds: int) -> AggregatorSettings:
        # resume: the restarted aggregator is another fake peer, so it takes the head
        # from the network, as a node told to resume a federation does
        return AggregatorSettings(
            rounds=rounds, strategy=FedAdam(lr=0.3), quorum=QuorumSchedule(2), resume=True, **FAST
        )

    straight = FakeNetwork()
    events: list[Event] = []
    whole = await federate(straight, settings(4), trainers, events=events)
    ref = [e.cid for e in events if isinstance(e, RoundClosed)]

    net = FakeNetwork()
    first = await federate(net, settings(2), trainers)
    assert first.final_cid == ref[1]
    again: list[Event] = []
    second = await federate(net, settings(4), trainers, aggregator="agg-restarted", events=again)
    assert [e.cid for e in again if isinstance(e, RoundClosed)] == ref[2:]
    assert second.final_cid == whole.final_cid

    # the state is named in the metadata and stored under that CID
    meta = decode(net.blobs[second.final_cid]).metadata
    record = read_strategy_record(meta)
    assert record.name == "fedadam" and record.state_values == {"step": 4}
    assert record.state_cid in net.blobs and record.state_size == len(net.blobs[record.state_cid])
    assert json.loads(meta[STATE_KEY])["arrays"] == record.state_cid


async def test_fedadam_restart_without_its_state_would_diverge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control for the test above: the CIDs depend on the carried state."""
    from fedstore.federation import aggregator
    from fedstore.federation.strategies import StrategyState

    trainers = {"t1": shift(1.0, 10), "t2": shift(-0.5, 30)}
    settings = AggregatorSettings(
        rounds=2, strategy=FedAdam(lr=0.3), quorum=QuorumSchedule(2), resume=True, **FAST
    )
    straight = FakeNetwork()
    whole = await federate(straight, replace(settings, rounds=3), trainers)

    async def forgetful(*args: object) -> StrategyState:
        return StrategyState()

    net = FakeNetwork()
    await federate(net, settings, trainers)
    with monkeypatch.context() as m:
        m.setattr(aggregator, "_resume_state", forgetful)
        fresh = await federate(net, replace(settings, rounds=3), trainers, aggregator="again")
    assert fresh.final_cid != whole.final_cid

    # and a state blob that cannot be fetched stops the restart with the error
    lost = FakeNetwork()
    first = await federate(lost, settings, trainers)
    state_cid = read_strategy_record(decode(lost.blobs[first.final_cid]).metadata).state_cid
    assert state_cid is not None
    del lost.blobs[state_cid]
    with pytest.raises(BaseExceptionGroup) as info:
        await federate(lost, replace(settings, rounds=3), trainers, aggregator="again")
    assert any(isinstance(e, NotFoundError) for e in info.value.exceptions)


async def test_another_strategy_after_a_restart_starts_fresh() -> None:
    net = FakeNetwork()
    trainers = {"t1": shift(1.0)}
    await federate(net, AggregatorSettings(rounds=1, strategy=FedAdam(), **FAST), trainers)
    result = await federate(
        net, AggregatorSettings(rounds=2, resume=True, **FAST), trainers, aggregator="agg-restarted"
    )
    meta = decode(net.blobs[result.final_cid]).metadata
    assert meta["fedstore.strategy"] == "fedavg" and STATE_KEY not in meta


def test_trainer_metrics_default_to_a_sample_weighted_mean() -> None:
    from fedstore.federation.strategies import weighted_mean_metrics

    z = {"w": np.zeros(1, np.float32)}
    ups = [
        Update("b", 30, z, {"loss": 2.0, "acc": float("nan")}),
        Update("a", 10, z, {"loss": 6.0, "acc": 0.5, "only_a": 1.0}),
        Update("c", 60, z, {}),
    ]
    # loss: (6*10 + 2*30) / 40; acc: only a's is finite; c reports nothing and weighs nothing
    assert weighted_mean_metrics(ups) == {"acc": 0.5, "loss": 3.0, "only_a": 1.0}
    assert weighted_mean_metrics(list(reversed(ups))) == weighted_mean_metrics(ups)
    assert FedAdam().aggregate_metrics(ups) == weighted_mean_metrics(ups)


def test_strategy_record_in_metadata() -> None:
    from fedstore.errors import FormatError

    rec = read_strategy_record(
        {
            "fedstore.strategy": "fedadam",
            "fedstore.strategy.settings": '{"lr":0.5}',
            "fedstore.strategy.state": '{"arrays":"bafkqaaa","size":12,"values":{"step":3}}',
        }
    )
    assert (rec.name, dict(rec.settings), dict(rec.state_values)) == (
        "fedadam",
        {"lr": 0.5},
        {"step": 3},
    )
    assert (rec.state_cid, rec.state_size) == ("bafkqaaa", 12)
    # checkpoints from before strategies had their own key
    assert read_strategy_record({"fedstore.aggregator": "median"}).name == "median"
    assert read_strategy_record({}).name is None
    for bad in (
        {"fedstore.strategy.state": "{not json"},
        {"fedstore.strategy.state": "[1]"},
        {"fedstore.strategy.state": '{"values":{"x":[1]}}'},
        {"fedstore.strategy.state": '{"arrays":"","values":{}}'},
        {"fedstore.strategy.state": '{"arrays":"bafkqaaa","size":-1}'},
        {"fedstore.strategy.settings": '{"flag":true}'},
    ):
        with pytest.raises(FormatError):
            read_strategy_record(bad)
