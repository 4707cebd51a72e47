"""Federated linear regression in plain numpy: a fedstore app to copy.

Every trainer holds its own slice of a synthetic data set (each slice drawn
around a different centre, so the trainers' data differ); the aggregator
averages their models with FedAvg and scores each global model on held-out
data. Run it from the repository root::

    fedstore simulate --app examples/numpy_linear/app.py:app --trainers 3

or across machines (the aggregator prints the --bootstrap address)::

    fedstore aggregate --app examples/numpy_linear/app.py:app
    fedstore train --app examples/numpy_linear/app.py:app --bootstrap /ip4/.../p2p/... \\
        --trainer-index 1 --trainers 3
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedstore.app import App, TrainerContext, TrainFn

Arrays = Mapping[str, npt.NDArray[np.generic]]
FEATURES = 8
TRUE_WEIGHT = np.linspace(-2.0, 2.0, FEATURES)
TRUE_BIAS = 0.5
NOISE = 0.1


def make_data(part: int, parts: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``size`` examples of slice ``part`` of ``parts``: features around that slice's centre."""
    rng = np.random.default_rng([seed, part, parts])
    centre = rng.normal(scale=1.5, size=FEATURES)
    x = rng.normal(loc=centre, size=(size, FEATURES))
    y = x @ TRUE_WEIGHT + TRUE_BIAS + rng.normal(scale=NOISE, size=size)
    return x.astype(np.float32), y.astype(np.float32)


#: held-out data the aggregator scores every global model on
X_TEST, Y_TEST = make_data(0, 0, 1000, seed=1)


def initial() -> dict[str, np.ndarray]:
    """Starting weights: all zeros."""
    return {"weight": np.zeros(FEATURES, np.float32), "bias": np.zeros(1, np.float32)}


def mse(arrays: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    pred = x @ arrays["weight"] + arrays["bias"][0]
    return float(np.mean((pred - y) ** 2))


def trainer(context: TrainerContext) -> TrainFn:
    """The training function of trainer ``context.index`` of ``context.count``."""
    x, y = make_data(context.index, context.count, size=400)

    def train(
        arrays: Arrays, round: int, config: Mapping[str, str | int | float]
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        w = np.array(arrays["weight"], dtype=np.float32)
        b = np.array(arrays["bias"], dtype=np.float32)
        lr = np.float32(config.get("lr", 0.03))
        rng = np.random.default_rng([context.index, round])
        for _ in range(int(config.get("epochs", 2))):
            for batch in np.array_split(rng.permutation(len(y)), len(y) // 20):
                err = x[batch] @ w + b[0] - y[batch]
                w -= lr * (x[batch].T @ err) / len(batch)
                b -= lr * err.mean(keepdims=True)
        new = {"weight": w, "bias": b}
        return new, len(y), {"train_mse": mse(new, x, y)}

    return train


def evaluate(arrays: Arrays) -> dict[str, float]:
    """Mean squared error and R² of a global model on the held-out data."""
    err = mse(arrays, X_TEST, Y_TEST)
    return {"mse": err, "r2": 1.0 - err / float(np.var(Y_TEST))}


app = App(
    initial=initial,
    trainer=trainer,
    evaluate=evaluate,
    strategy="fedavg",
    rounds=5,
    quorum=2,
    targets={"r2": 0.98},
)
