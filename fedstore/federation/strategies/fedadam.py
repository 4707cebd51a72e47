"""FedAdam: Adam on the server, over the trainers' mean update (Reddi et al. 2021).

The strategy that shows why strategies carry state. Each round, with ``x``
the base model and ``Δ`` the sample-weighted mean of ``update - x``::

    m ← β1·m + (1 - β1)·Δ
    v ← β2·v + (1 - β2)·Δ²
    x ← x + lr · m / (√v + τ)

(no bias correction, as in the paper's FedAdam). The moments ``m`` and
``v`` are the strategy's state: stored after every round in a blob whose CID
the global checkpoint's metadata names, so a restarted aggregator continues
with exactly the moments the last round produced and reaches the same CIDs as
one that never stopped. They are kept in float32 for float16/float32 tensors
and float64 for float64 ones; the stored (cast) values are the ones the next
round uses, in every process.

Only floating-point tensors are optimised; integer and boolean tensors take
the FedAvg value. All arithmetic is elementwise float64 in a fixed order, so
the result is deterministic like every fedstore strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedstore.federation.strategies.base import (
    Aggregate,
    BaseStrategy,
    ConfigValue,
    Failure,
    NDArray,
    RoundContext,
    StrategyState,
    Update,
    cast_back,
    check_number,
    clip_updates,
    ordered_updates,
)
from fedstore.federation.strategies.builtin import weighted_mean64

__all__ = ["FedAdam"]


def _state_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.generic]:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


class FedAdam(BaseStrategy):
    """Server-side Adam over the mean update; see the module docstring.

    Settings: ``lr`` (server learning rate, default 0.1), ``beta1`` (0.9),
    ``beta2`` (0.99), ``tau`` (adaptivity, default 1e-3), ``clip`` (default 0:
    off; bounds each update's step from the base model to that L2 norm first).
    """

    name = "fedadam"

    def __init__(
        self,
        lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        clip: float = 0.0,
    ) -> None:
        self.clip = check_number("clip", clip, lo=0.0, hi=1e300)
        self.lr = check_number("lr", lr, lo=0.0, hi=1e3, lo_open=True)
        self.beta1 = check_number("beta1", beta1, lo=0.0, hi=1.0, hi_open=True)
        self.beta2 = check_number("beta2", beta2, lo=0.0, hi=1.0, hi_open=True)
        self.tau = check_number("tau", tau, lo=0.0, hi=1e3, lo_open=True)

    def settings(self) -> Mapping[str, ConfigValue]:
        settings: dict[str, ConfigValue] = {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
        }
        if self.clip > 0:
            settings["clip"] = self.clip
        return settings

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        ordered, clipped = clip_updates(round, ordered_updates(updates), self.clip)
        names = sorted(ordered[0].arrays)
        if sorted(round.base) != names:
            raise ValueError("the updates' tensor names differ from the base model's")
        prior = round.state.arrays
        step = int(round.state.values.get("step", 0))
        out: dict[str, NDArray] = {}
        moments: dict[str, NDArray] = {}
        sq_norm = 0.0
        for name in names:
            base = np.asarray(round.base[name])
            mean = weighted_mean64(ordered, name)
            if not np.issubdtype(base.dtype, np.floating):
                out[name] = cast_back(mean, base)
                continue
            base64 = base.astype(np.float64)
            delta = mean - base64
            m_prev = self._moment(prior, f"m.{name}", base)
            v_prev = self._moment(prior, f"v.{name}", base)
            m = self.beta1 * m_prev + (1.0 - self.beta1) * delta
            v = self.beta2 * v_prev + (1.0 - self.beta2) * (delta * delta)
            # the moments as stored are the moments used next round, in any process
            sdt = _state_dtype(base.dtype)
            m_kept: NDArray = np.ascontiguousarray(m.astype(sdt))
            v_kept: NDArray = np.ascontiguousarray(v.astype(sdt))
            step_vec = self.lr * m / (np.sqrt(v) + self.tau)
            out[name] = cast_back(base64 + step_vec, base)
            moments[f"m.{name}"] = m_kept
            moments[f"v.{name}"] = v_kept
            moved = out[name].astype(np.float64) - base64
            sq_norm += float(np.sum(moved * moved))  # pairwise sum, not BLAS: same bits anywhere
        state = StrategyState({"step": step + 1}, moments)
        metrics = {"step_norm": math.sqrt(sq_norm)}
        if self.clip > 0:
            metrics["clipped"] = float(clipped)
        return Aggregate(out, metrics, state)

    @staticmethod
    def _moment(prior: Mapping[str, NDArray], key: str, base: NDArray) -> npt.NDArray[np.float64]:
        if key not in prior:
            return np.zeros(base.shape, dtype=np.float64)
        arr = np.asarray(prior[key])
        if arr.shape != base.shape:
            raise ValueError(
                f"FedAdam state {key!r} has shape {arr.shape}, the model tensor {base.shape}"
            )
        out: npt.NDArray[np.float64] = arr.astype(np.float64)
        return out
