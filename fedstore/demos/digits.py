"""The built-in app: handwritten digits with a small numpy MLP (``fedstore.demos.digits:app``).

``fedstore demo`` is ``fedstore simulate`` of this app; run it yourself with
any of the federation commands::

    fedstore simulate --app fedstore.demos.digits:app --trainers 3
    fedstore simulate --app fedstore.demos.digits:make_app --app-config hidden=0 --app-config seed=2

The task, data split and model are :mod:`fedstore.demos.digits_task`.
:func:`make_app` takes the task's knobs (``hidden``, ``epochs``, ``lr``,
``alpha``, ``seed``); ``app`` is ``make_app()`` with the defaults. Trainer
``i`` of ``N`` (:class:`~fedstore.app.TrainerContext`) trains on part ``i``
of the non-IID split of the training set into ``N`` parts; the aggregator
evaluates every global model on the held-out test set; the report's baseline
is centralised training on all the training data.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedstore.app import App, TrainerContext, TrainFn
from fedstore.demos.digits_task import (
    DigitsConfig,
    DigitsData,
    DigitsTask,
    centralised_baseline,
    evaluate_model,
    init_model,
    load_data,
)

__all__ = ["app", "make_app"]


@dataclass
class _Digits:
    """The app's functions over one configuration, loading the data once, when first needed."""

    cfg: DigitsConfig
    _data: DigitsData | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def data(self) -> DigitsData:
        with self._lock:
            if self._data is None:
                self._data = load_data(self.cfg)
            return self._data

    def initial(self) -> dict[str, npt.NDArray[np.float32]]:
        return init_model(self.cfg)

    def trainer(self, context: TrainerContext) -> TrainFn:
        return DigitsTask(context.count, self.cfg).trainer(context.index)

    def evaluate(self, arrays: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, float]:
        data = self.data()
        return evaluate_model(arrays, data.x_test, data.y_test)

    def baseline(self, rounds: int) -> list[dict[str, float]]:
        return centralised_baseline(rounds, self.cfg, self.data())


def make_app(
    hidden: int = 32, epochs: int = 4, lr: float = 0.15, alpha: float = 0.5, seed: int = 0
) -> App:
    """The digits app with these task settings (see :class:`~.digits_task.DigitsConfig`)."""
    cfg = DigitsConfig(hidden=hidden, epochs=epochs, lr=lr, alpha=alpha, seed=seed)
    digits = _Digits(cfg)
    return App(
        name="digits",
        initial=digits.initial,
        trainer=digits.trainer,
        evaluate=digits.evaluate,
        strategy="fedavg",
        rounds=10,
        quorum=3,
        round_timeout=30.0,
        metadata={
            "fedstore.task": f"digits-{cfg.model_name}",
            "fedstore.task_seed": str(cfg.seed),
        },
        baseline=digits.baseline,
        targets={"accuracy": 0.90},
    )


#: The digits app with its default settings.
app = make_app()
