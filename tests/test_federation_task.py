"""The built-in digits task: data split, model, training, and the accuracy targets in-process."""

from __future__ import annotations

import numpy as np
import pytest

from fedstore.demos.digits_task import (
    NUM_CLASSES,
    DigitsConfig,
    DigitsTask,
    evaluate_model,
    init_model,
    load_data,
    split_non_iid,
    train_local,
)
from fedstore.errors import ConfigError
from fedstore.federation.strategies import Update
from fedstore.federation.strategies.builtin import fedavg


@pytest.fixture(scope="module")
def task() -> DigitsTask:
    return DigitsTask(3)


def test_data_is_standardised_and_held_out() -> None:
    data = load_data()
    assert data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_test) == 1797
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    # train and test rows are disjoint images
    train_rows = {r.tobytes() for r in data.x_train}
    assert sum(r.tobytes() in train_rows for r in data.x_test) < 10  # digits has a few dupes
    assert set(np.unique(data.y_test)) == set(range(NUM_CLASSES))


@pytest.mark.parametrize("n", [2, 3, 5])
def test_split_is_a_skewed_partition_with_every_class(n: int) -> None:
    y = load_data().y_train
    parts = split_non_iid(y, n, alpha=0.5, seed=1, min_per_class=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)
    counts = np.stack([np.bincount(y[p], minlength=NUM_CLASSES) for p in parts])
    assert counts.min() >= 3
    # label skew: class proportions differ clearly between trainers
    props = counts / counts.sum(axis=1, keepdims=True)
    assert float(np.abs(props - props.mean(axis=0)).max()) > 0.05
    again = split_non_iid(y, n, alpha=0.5, seed=1, min_per_class=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_init_and_training_are_deterministic(task: DigitsTask) -> None:
    a = init_model(task.cfg)
    b = init_model(task.cfg)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    fn = task.trainer(1)
    out1, n1, m1 = fn(a, 1)
    out2, _, _ = fn(b, 1)
    assert all(out1[k].tobytes() == out2[k].tobytes() for k in out1)
    assert n1 == len(task.parts[0])
    assert np.isfinite(m1["train_loss"])
    # a different round shuffles differently
    out3, _, _ = fn(a, 2)
    assert any(out1[k].tobytes() != out3[k].tobytes() for k in out1)
    # the input arrays are not modified
    assert all(a[k].tobytes() == init_model(task.cfg)[k].tobytes() for k in a)


@pytest.mark.parametrize("hidden", [0, 16])
def test_training_learns(hidden: int) -> None:
    cfg = DigitsConfig(hidden=hidden)
    data = load_data(cfg)
    p0 = init_model(cfg)
    before = evaluate_model(p0, data.x_test, data.y_test)
    p1, metrics = train_local(p0, data.x_train, data.y_train, cfg=cfg, epochs=3, seed=0)
    after = evaluate_model(p1, data.x_test, data.y_test)
    assert after["accuracy"] > 0.85 > before["accuracy"]
    assert after["loss"] < before["loss"]


def test_bad_config_and_indices(task: DigitsTask) -> None:
    with pytest.raises(ConfigError):
        DigitsConfig(hidden=-1)
    with pytest.raises(ConfigError):
        DigitsConfig(lr=0)
    with pytest.raises(ConfigError):
        task.trainer(0)
    with pytest.raises(ConfigError):
        split_non_iid(np.zeros(10, np.int64), 0)


def test_federation_meets_demo_targets_in_process(task: DigitsTask) -> None:
    """The demo's schedule without the network: 10 rounds, trainer 3 joins at round 5."""
    rounds = 10
    g = task.initial_arrays()
    fns = {i: task.trainer(i) for i in (1, 2, 3)}
    for r in range(1, rounds + 1):
        active = (1, 2) if r < 5 else (1, 2, 3)
        ups = []
        for i in active:
            arrays, n, _ = fns[i](g, r)
            ups.append(Update(f"trainer-{i}", n, arrays))
        g = fedavg(ups)
    fed = task.evaluate(g)["accuracy"]
    central = task.centralised(rounds)
    assert len(central) == rounds
    assert central[-1]["accuracy"] >= 0.93
    assert fed >= 0.90
    assert central[-1]["accuracy"] - fed <= 0.03


@pytest.mark.slow
def test_fast_loader_matches_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    from fedstore.demos.digits_task import load_digits_arrays, stratified_split

    x, y = load_digits_arrays()
    ref_x, ref_y = load_digits(return_X_y=True)
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    train, test = stratified_split(y, 0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(y)
    per_class = np.bincount(y[test], minlength=NUM_CLASSES) / np.bincount(y)
    assert np.allclose(per_class, 0.25, atol=0.01)


def test_round_config_sets_epochs_and_lr(task: DigitsTask) -> None:
    fn = task.trainer(1)
    a = init_model(task.cfg)
    plain, _, _ = fn(a, 1, {})
    same, _, _ = fn(a, 1, {"unrelated": "ignored"})
    assert all(plain[k].tobytes() == same[k].tobytes() for k in plain)
    longer, _, _ = fn(a, 1, {"epochs": task.cfg.epochs + 1})
    slower, _, _ = fn(a, 1, {"lr": task.cfg.lr / 2})
    assert any(plain[k].tobytes() != longer[k].tobytes() for k in plain)
    assert any(plain[k].tobytes() != slower[k].tobytes() for k in plain)
    for bad in ({"epochs": 0}, {"epochs": 1.5}, {"lr": 0}, {"lr": "fast"}):
        with pytest.raises(ConfigError, match="round config"):
            fn(a, 1, bad)
