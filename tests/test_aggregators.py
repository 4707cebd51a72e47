"""Built-in strategies: correctness against independent formulas, robustness, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstore.errors import StrategyError
from fedstore.federation.strategies import RoundContext, Update, load_strategy
from fedstore.federation.strategies.base import NDArray
from fedstore.federation.strategies.builtin import fedavg, median, trimmed_mean

#: the strategies every ``fedstore demo --aggregator`` has offered
BUILTIN = ("fedavg", "median", "trimmed-mean")


def aggregate(name: str, updates: list[Update]) -> dict[str, NDArray]:
    """Run the registered strategy ``name`` (default settings) on ``updates``."""
    base = {k: np.zeros_like(v) for k, v in updates[0].arrays.items()}
    out = load_strategy(name).aggregate(RoundContext(1, "base", base), updates, ()).arrays
    assert out is not None
    return out


def _updates(n: int, seed: int = 0, shape: tuple[int, ...] = (4, 3)) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [
        Update(
            sender=f"peer-{i}",
            num_samples=int(rng.integers(1, 500)),
            arrays={
                "w": rng.standard_normal(shape).astype(np.float32),
                "b": rng.standard_normal(shape[-1]).astype(np.float32),
            },
        )
        for i in range(n)
    ]


def test_fedavg_matches_weighted_average() -> None:
    ups = _updates(4)
    out = fedavg(ups)
    weights = np.array([u.num_samples for u in ups], dtype=np.float64)
    for name in ("w", "b"):
        stacked = np.stack([u.arrays[name].astype(np.float64) for u in ups])
        expected = np.tensordot(weights / weights.sum(), stacked, axes=1)
        np.testing.assert_allclose(out[name], expected, rtol=1e-6)
        assert out[name].dtype == np.float32


def test_fedavg_weights_by_samples_not_by_peer() -> None:
    a = Update("a", 3, {"x": np.array([0.0], np.float32)})
    b = Update("b", 1, {"x": np.array([4.0], np.float32)})
    assert fedavg([a, b])["x"][0] == pytest.approx(1.0)


def test_median_odd_and_even() -> None:
    vals = [1.0, 7.0, 3.0, 100.0, -5.0]
    ups = [Update(f"p{i}", 1, {"x": np.array([v], np.float64)}) for i, v in enumerate(vals)]
    assert median(ups)["x"][0] == 3.0
    assert median(ups[:4])["x"][0] == pytest.approx((3.0 + 7.0) / 2)


def test_trimmed_mean_drops_extremes() -> None:
    vals = [1.0, 2.0, 3.0, 4.0, 1000.0]
    ups = [Update(f"p{i}", 1, {"x": np.array([v], np.float32)}) for i, v in enumerate(vals)]
    # trim=0.2 with 5 updates trims one value from each end: mean(2, 3, 4)
    assert trimmed_mean(ups, trim=0.2)["x"][0] == pytest.approx(3.0)
    # trim=0 is the plain (unweighted) mean
    assert trimmed_mean(ups, trim=0.0)["x"][0] == pytest.approx(np.mean(vals))
    with pytest.raises(ValueError):
        trimmed_mean(ups, trim=0.5)


def test_robust_aggregators_resist_one_byzantine_peer() -> None:
    honest = _updates(4, seed=3)
    evil = Update("zz-evil", 10_000, {k: np.full_like(v, 1e6) for k, v in honest[0].arrays.items()})
    ups = [*honest, evil]
    honest_max = max(float(np.abs(u.arrays["w"]).max()) for u in honest)
    assert float(np.abs(fedavg(ups)["w"]).max()) > 1e5  # FedAvg is dragged away
    assert float(np.abs(median(ups)["w"]).max()) <= honest_max
    assert float(np.abs(trimmed_mean(ups, trim=0.2)["w"]).max()) <= honest_max


@pytest.mark.parametrize("name", BUILTIN)
def test_result_independent_of_arrival_order(name: str) -> None:
    ups = _updates(5, seed=11)
    ref = aggregate(name, ups)
    for perm in itertools.islice(itertools.permutations(ups), 0, 120, 17):
        out = aggregate(name, list(perm))
        for k in ref:
            assert out[k].tobytes() == ref[k].tobytes()


@pytest.mark.parametrize("name", BUILTIN)
def test_identical_updates_aggregate_to_themselves(name: str) -> None:
    base = _updates(1, seed=5)[0]
    ups = [Update(f"p{i}", i + 1, base.arrays) for i in range(3)]
    out = aggregate(name, ups)
    for k, v in base.arrays.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-6)


def test_integer_tensors_are_rounded_and_keep_dtype() -> None:
    ups = [
        Update("a", 1, {"steps": np.array([3], np.int64)}),
        Update("b", 1, {"steps": np.array([4], np.int64)}),
        Update("c", 2, {"steps": np.array([10], np.int64)}),
    ]
    out = fedavg(ups)["steps"]
    assert out.dtype == np.int64
    assert out[0] == 7  # (3 + 4 + 20) / 4 = 6.75 -> 7


def test_rejects_inconsistent_inputs() -> None:
    a = Update("a", 1, {"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="zero updates"):
        fedavg([])
    with pytest.raises(ValueError, match="duplicate"):
        fedavg([a, Update("a", 2, {"x": np.ones(3, np.float32)})])
    with pytest.raises(ValueError, match="names"):
        median([a, Update("b", 1, {"y": np.zeros(3, np.float32)})])
    with pytest.raises(ValueError, match="shape"):
        fedavg([a, Update("b", 1, {"x": np.zeros(4, np.float32)})])
    with pytest.raises(ValueError, match="num_samples"):
        fedavg([a, Update("b", 0, {"x": np.zeros(3, np.float32)})])
    with pytest.raises(StrategyError, match="unknown strategy 'krum'"):
        load_strategy("krum")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 1000),
            st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=7,
    )
)
def test_results_lie_within_coordinate_bounds(rows: list[tuple[int, list[float]]]) -> None:
    ups = [Update(f"p{i:02d}", n, {"x": np.array(v, np.float32)}) for i, (n, v) in enumerate(rows)]
    stacked = np.stack([u.arrays["x"] for u in ups])
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    for name in BUILTIN:
        out = aggregate(name, ups)["x"]
        assert np.all(out >= lo) and np.all(out <= hi), name
