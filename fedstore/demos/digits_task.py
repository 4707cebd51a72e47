"""The built-in federated task: handwritten digits with a small numpy model.

Data: scikit-learn's digits (1797 8x8 images, 10 classes; the data ships
inside the scikit-learn wheel, nothing is downloaded). A stratified held-out
test set is cut with a fixed seed; features are standardised with the
training set's mean and standard deviation.

Split: the training set is divided across ``N`` trainers with label skew
drawn from a Dirichlet distribution (``alpha``; smaller is more skewed), with
a fixed seed, and every trainer keeps at least ``min_per_class`` examples of
every class so that the federation can reach the accuracy of centralised
training.

Model: softmax regression (``hidden=0``) or a one-hidden-layer ReLU MLP,
float32 parameters with a deterministic initialisation, trained with
minibatch SGD (fixed-seed shuffles, L2 weight decay). Everything here is
pure numpy and deterministic: the same configuration gives the same arrays
bit for bit in every process on the same platform.

The centralised baseline trains the same model on the union of the
trainers' data for ``rounds * epochs`` epochs (the same number of passes a
trainer's data gets in the federation), evaluating after every ``epochs``
epochs so it can be drawn per round next to the federated curve.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedstore.errors import ConfigError

__all__ = [
    "NUM_CLASSES",
    "NUM_FEATURES",
    "DigitsConfig",
    "DigitsData",
    "DigitsTask",
    "centralised_baseline",
    "evaluate_model",
    "init_model",
    "load_data",
    "load_digits_arrays",
    "split_non_iid",
    "stratified_split",
    "train_local",
]

NUM_FEATURES = 64
NUM_CLASSES = 10

Arrays = dict[str, npt.NDArray[np.float32]]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DigitsConfig:
    """Every knob of the built-in task. Defaults meet the demo's targets."""

    #: hidden units of the MLP; 0 means softmax regression
    hidden: int = 32
    #: local epochs per round (and, times rounds, the centralised epochs)
    epochs: int = 4
    lr: float = 0.15
    batch_size: int = 32
    weight_decay: float = 1e-4
    #: Dirichlet concentration of the label skew across trainers
    alpha: float = 0.5
    min_per_class: int = 3
    test_fraction: float = 0.25
    #: seed of the test split, the non-IID split, the init and the shuffles
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise ConfigError(f"hidden must be >= 0 (0 = softmax regression), got {self.hidden}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        if not (0.0 < self.lr < 10.0):
            raise ConfigError(f"lr must be in (0, 10), got {self.lr}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if not (0.05 <= self.test_fraction <= 0.5):
            raise ConfigError(f"test_fraction must be in [0.05, 0.5], got {self.test_fraction}")

    @property
    def model_name(self) -> str:
        return "softmax" if self.hidden == 0 else f"mlp{self.hidden}"


@dataclass(frozen=True, slots=True)
class DigitsData:
    """Standardised digits, split into a training and a held-out test set."""

    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


def load_digits_arrays() -> tuple[npt.NDArray[np.float64], IntArray]:
    """The 1797 digits as ``(x, y)``, exactly what ``sklearn.datasets.load_digits`` returns.

    Reads the CSV that ships inside the scikit-learn package directly (found
    without importing scikit-learn, which saves about a second per process);
    falls back to ``load_digits`` if the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            path = Path(base) / "datasets" / "data" / "digits.csv.gz"
            if path.is_file():
                data = np.loadtxt(path, delimiter=",")
                return data[:, :-1], data[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise ConfigError(
            "the built-in digits task needs scikit-learn: pip install scikit-learn"
        ) from exc
    x, y = load_digits(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def stratified_split(
    labels: IntArray, test_fraction: float, seed: int
) -> tuple[IntArray, IntArray]:
    """Sorted (train, test) indices with ``round(test_fraction * n_c)`` of each class in test."""
    rng = np.random.default_rng([seed, 1797])
    test: list[int] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.extend(idx[: int(round(test_fraction * len(idx)))].tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def load_data(cfg: DigitsConfig | None = None) -> DigitsData:
    """Load, split (stratified, fixed seed) and standardise the digits data."""
    cfg = cfg or DigitsConfig()
    x, y = load_digits_arrays()
    train, test = stratified_split(y, cfg.test_fraction, cfg.seed)
    x_tr, x_te = x[train], x[test]
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0
    return DigitsData(
        x_train=((x_tr - mean) / std).astype(np.float32),
        y_train=y[train],
        x_test=((x_te - mean) / std).astype(np.float32),
        y_test=y[test],
    )


def split_non_iid(
    labels: IntArray,
    num_trainers: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_per_class: int = 3,
) -> list[IntArray]:
    """Indices of each trainer's examples: Dirichlet label skew, fixed seed.

    For each class, ``min_per_class`` examples go to every trainer and the
    rest are shared out in proportions drawn from ``Dirichlet(alpha)``. The
    parts are disjoint, cover every index, and are returned sorted.
    """
    if num_trainers < 1:
        raise ConfigError(f"need at least one trainer, got {num_trainers}")
    rng = np.random.default_rng([seed, num_trainers])
    parts: list[list[int]] = [[] for _ in range(num_trainers)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        floor = min(min_per_class, len(idx) // num_trainers)
        rest = len(idx) - floor * num_trainers
        props = rng.dirichlet([alpha] * num_trainers)
        counts = np.floor(props * rest).astype(np.int64)
        counts[int(np.argmax(props))] += rest - int(counts.sum())
        counts += floor
        start = 0
        for t in range(num_trainers):
            parts[t].extend(idx[start : start + counts[t]].tolist())
            start += int(counts[t])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def init_model(cfg: DigitsConfig | None = None) -> Arrays:
    """Deterministic initial parameters (He-normal hidden layer, zero biases)."""
    cfg = cfg or DigitsConfig()
    if cfg.hidden == 0:
        return {
            "linear.bias": np.zeros(NUM_CLASSES, np.float32),
            "linear.weight": np.zeros((NUM_FEATURES, NUM_CLASSES), np.float32),
        }
    rng = np.random.default_rng([cfg.seed, 7919])
    h = cfg.hidden
    return {
        "hidden.bias": np.zeros(h, np.float32),
        "hidden.weight": (
            rng.standard_normal((NUM_FEATURES, h)) * np.sqrt(2.0 / NUM_FEATURES)
        ).astype(np.float32),
        "output.bias": np.zeros(NUM_CLASSES, np.float32),
        "output.weight": (rng.standard_normal((h, NUM_CLASSES)) * np.sqrt(1.0 / h)).astype(
            np.float32
        ),
    }


def _check_arrays(arrays: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
    out: Arrays = {}
    for name, arr in arrays.items():
        out[name] = np.array(arr, dtype=np.float32, copy=True)
    if "linear.weight" in out or "hidden.weight" in out:
        return out
    raise ConfigError(f"arrays are not a digits model (tensors: {sorted(out)})")


def _logits(p: Arrays, x: FloatArray) -> tuple[FloatArray, FloatArray | None]:
    if "linear.weight" in p:
        return x @ p["linear.weight"] + p["linear.bias"], None
    h = np.maximum(x @ p["hidden.weight"] + p["hidden.bias"], 0.0)
    return h @ p["output.weight"] + p["output.bias"], h


def _softmax(z: FloatArray) -> FloatArray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def train_local(
    arrays: Mapping[str, npt.NDArray[np.generic]],
    x: FloatArray,
    y: IntArray,
    *,
    cfg: DigitsConfig,
    epochs: int,
    seed: int | list[int],
) -> tuple[Arrays, dict[str, float]]:
    """Run ``epochs`` epochs of minibatch SGD from ``arrays``; returns new arrays and metrics.

    The input arrays are not modified. Metrics: ``train_loss`` (mean
    cross-entropy over the last epoch's batches).
    """
    p = _check_arrays(arrays)
    rng = np.random.default_rng(seed)
    lr = np.float32(cfg.lr)
    wd = np.float32(cfg.weight_decay)
    n = len(x)
    last_loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        losses: list[float] = []
        for start in range(0, n, cfg.batch_size):
            b = order[start : start + cfg.batch_size]
            xb, yb = x[b], y[b]
            z, h = _logits(p, xb)
            prob = _softmax(z)
            rows = np.arange(len(b))
            losses.append(float(-np.log(prob[rows, yb] + 1e-12).mean()))
            g = prob
            g[rows, yb] -= 1.0
            g /= np.float32(len(b))
            if h is None:
                p["linear.weight"] -= lr * (xb.T @ g + wd * p["linear.weight"])
                p["linear.bias"] -= lr * g.sum(axis=0)
            else:
                gh = (g @ p["output.weight"].T) * (h > 0)
                p["output.weight"] -= lr * (h.T @ g + wd * p["output.weight"])
                p["output.bias"] -= lr * g.sum(axis=0)
                p["hidden.weight"] -= lr * (xb.T @ gh + wd * p["hidden.weight"])
                p["hidden.bias"] -= lr * gh.sum(axis=0)
        last_loss = float(np.mean(losses)) if losses else float("nan")
    return p, {"train_loss": last_loss}


def evaluate_model(
    arrays: Mapping[str, npt.NDArray[np.generic]], x: FloatArray, y: IntArray
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of the model on ``(x, y)``."""
    p = _check_arrays(arrays)
    z, _ = _logits(p, x)
    prob = _softmax(z)
    loss = float(-np.log(prob[np.arange(len(y)), y] + 1e-12).mean())
    acc = float((z.argmax(axis=1) == y).mean())
    return {"accuracy": acc, "loss": loss}


def centralised_baseline(
    rounds: int, cfg: DigitsConfig | None = None, data: DigitsData | None = None
) -> list[dict[str, float]]:
    """Centralised training for ``rounds * cfg.epochs`` epochs on all training data.

    Returns one metrics dict per round-equivalent (after every ``cfg.epochs``
    epochs), so element ``r-1`` is comparable with federated round ``r``.
    """
    cfg = cfg or DigitsConfig()
    data = data or load_data(cfg)
    arrays = init_model(cfg)
    curve: list[dict[str, float]] = []
    for r in range(1, rounds + 1):
        arrays, _ = train_local(
            arrays, data.x_train, data.y_train, cfg=cfg, epochs=cfg.epochs, seed=[cfg.seed, 0, r]
        )
        curve.append(evaluate_model(arrays, data.x_test, data.y_test))
    return curve


@dataclass(slots=True)
class DigitsTask:
    """The digits task bound to one federation size: data, split and per-role callables.

    ``trainer(i)`` (``i`` from 1 to ``num_trainers``) returns a training
    function with the :mod:`fedstore.federation.api` signature
    ``train(arrays, round, config) -> (arrays, num_samples, metrics)``;
    ``evaluate`` is the matching evaluation function on the test set.
    """

    num_trainers: int
    cfg: DigitsConfig = field(default_factory=DigitsConfig)
    data: DigitsData = field(init=False)
    parts: list[IntArray] = field(init=False)

    def __post_init__(self) -> None:
        self.data = load_data(self.cfg)
        self.parts = split_non_iid(
            self.data.y_train,
            self.num_trainers,
            alpha=self.cfg.alpha,
            seed=self.cfg.seed,
            min_per_class=self.cfg.min_per_class,
        )

    def initial_arrays(self) -> Arrays:
        return init_model(self.cfg)

    def class_counts(self, index: int) -> list[int]:
        """How many training examples of each class trainer ``index`` holds."""
        y = self.data.y_train[self.parts[self._slot(index)]]
        return [int(c) for c in np.bincount(y, minlength=NUM_CLASSES)]

    def _slot(self, index: int) -> int:
        if not 1 <= index <= self.num_trainers:
            raise ConfigError(f"trainer index must be 1..{self.num_trainers}, got {index}")
        return index - 1

    def trainer(self, index: int) -> TrainerFn:
        slot = self._slot(index)
        idx = self.parts[slot]
        return TrainerFn(self.cfg, self.data.x_train[idx], self.data.y_train[idx], index)

    def evaluate(self, arrays: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, float]:
        return evaluate_model(arrays, self.data.x_test, self.data.y_test)

    def centralised(self, rounds: int) -> list[dict[str, float]]:
        return centralised_baseline(rounds, self.cfg, self.data)


@dataclass(frozen=True, slots=True)
class TrainerFn:
    """One trainer's local training function (picklable, deterministic per round).

    The round's config may set ``epochs`` (an integer, 1-100) and ``lr``
    (a number in (0, 10)) for that round; other names are ignored.
    """

    cfg: DigitsConfig
    x: FloatArray
    y: IntArray
    index: int

    def __call__(
        self,
        arrays: Mapping[str, npt.NDArray[np.generic]],
        round: int,
        config: Mapping[str, str | int | float] | None = None,
    ) -> tuple[Arrays, int, dict[str, float]]:
        cfg, epochs = self.cfg, self.cfg.epochs
        config = config or {}
        if "epochs" in config:
            e = config["epochs"]
            if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= 100:
                raise ConfigError(f"round config epochs must be an integer 1-100, got {e!r}")
            epochs = e
        if "lr" in config:
            lr = config["lr"]
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < 10:
                raise ConfigError(f"round config lr must be a number in (0, 10), got {lr!r}")
            cfg = replace(cfg, lr=float(lr))
        new, metrics = train_local(
            arrays,
            self.x,
            self.y,
            cfg=cfg,
            epochs=epochs,
            seed=[cfg.seed, self.index, round],
        )
        return new, len(self.y), metrics
