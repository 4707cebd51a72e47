"""The built-in strategies: FedAvg, coordinate-wise median, trimmed mean.

Each is a pure, deterministic function of the updates (module functions
:func:`fedavg`, :func:`median`, :func:`trimmed_mean`) wrapped in a
:class:`~fedstore.federation.strategies.base.Strategy` class registered in the
``fedstore.strategies`` entry-point group (``fedavg``, ``median``,
``trimmed-mean``). Updates are processed in order of sender id (the string
sort of the peer id, whatever order they arrived in), every tensor is
accumulated in float64 with a fixed order of operations, and the result is
cast back to the tensor's original dtype (integer tensors are rounded to
nearest first). Any peer that re-runs the aggregation on the same updates
therefore gets the same arrays bit for bit, hence the same encoded bytes and
the same CID.

The updates must already have passed :mod:`fedstore.federation.validation`
(same tensor names, shapes and dtypes, finite values); the functions here
only re-check what they rely on and raise :class:`ValueError` otherwise.
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
    Update,
    cast_back,
    check_number,
    clip_updates,
    ordered_updates,
    stack_tensor,
)

__all__ = [
    "FedAvg",
    "Median",
    "TrimmedMean",
    "fedavg",
    "median",
    "trimmed_mean",
    "weighted_mean64",
]


def weighted_mean64(ordered: Sequence[Update], name: str) -> npt.NDArray[np.float64]:
    """Tensor ``name`` averaged over ``ordered`` weighted by sample counts, in float64.

    ``ordered`` must come from :func:`ordered_updates` (the order is part of
    the result's bits).
    """
    total = 0.0
    for u in ordered:
        if u.num_samples < 1:
            raise ValueError(f"update from {u.sender} has num_samples={u.num_samples}")
        total += float(u.num_samples)
    ref = np.asarray(ordered[0].arrays[name])
    acc = np.zeros(ref.shape, dtype=np.float64)
    term = np.empty(ref.shape, dtype=np.float64)  # one scratch buffer for every update
    for u in ordered:
        arr = np.asarray(u.arrays[name])
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise ValueError(f"tensor {name!r} from {u.sender} has another shape or dtype")
        # the bits of arr.astype(float64) * n, without two temporaries per update
        np.multiply(arr, float(u.num_samples), out=term, dtype=np.float64, casting="unsafe")
        acc += term
    acc /= total
    return acc


def fedavg(updates: Sequence[Update]) -> dict[str, NDArray]:
    """FedAvg: mean of the updates weighted by their sample counts."""
    ordered = ordered_updates(updates)
    for u in ordered:
        if u.num_samples < 1:
            raise ValueError(f"update from {u.sender} has num_samples={u.num_samples}")
    return {
        name: cast_back(weighted_mean64(ordered, name), np.asarray(ordered[0].arrays[name]))
        for name in sorted(ordered[0].arrays)
    }


def median(updates: Sequence[Update]) -> dict[str, NDArray]:
    """Coordinate-wise median (mean of the two middle values for an even count).

    Ignores sample counts: every trainer has one vote, which is what makes it
    robust to a minority of arbitrary (Byzantine) updates.
    """
    ordered = ordered_updates(updates)
    out: dict[str, NDArray] = {}
    for name in sorted(ordered[0].arrays):
        stacked = np.sort(stack_tensor(ordered, name), axis=0)
        n = stacked.shape[0]
        mid = n // 2
        med = stacked[mid] if n % 2 else (stacked[mid - 1] + stacked[mid]) * 0.5
        out[name] = cast_back(med, np.asarray(ordered[0].arrays[name]))
    return out


def trimmed_mean(updates: Sequence[Update], trim: float = 0.2) -> dict[str, NDArray]:
    """Coordinate-wise trimmed mean: drop the ``floor(trim * n)`` lowest and highest values.

    ``trim`` is in ``[0, 0.5)``; with few updates (``trim * n < 1``) nothing is
    trimmed and this is the unweighted mean. Sample counts are ignored.
    """
    trim = check_number("trim", trim, lo=0.0, hi=0.5, hi_open=True)
    ordered = ordered_updates(updates)
    n = len(ordered)
    k = math.floor(trim * n)
    out: dict[str, NDArray] = {}
    for name in sorted(ordered[0].arrays):
        stacked = np.sort(stack_tensor(ordered, name), axis=0)
        kept = stacked[k : n - k]
        acc = np.zeros(kept.shape[1:], dtype=np.float64)
        for row in kept:
            acc += row
        out[name] = cast_back(acc / float(len(kept)), np.asarray(ordered[0].arrays[name]))
    return out


class _Clipping(BaseStrategy):
    """A strategy with the ``clip`` setting: bound each update's step to that L2 norm first.

    ``clip`` 0 (the default) clips nothing and is not recorded among the
    settings, so checkpoints of strategies without clipping are unchanged.
    """

    def __init__(self, clip: float = 0.0) -> None:
        self.clip = check_number("clip", clip, lo=0.0, hi=1e300)

    def settings(self) -> Mapping[str, ConfigValue]:
        return {"clip": self.clip} if self.clip > 0 else {}

    def _clipped(
        self, round: RoundContext, updates: Sequence[Update]
    ) -> tuple[list[Update], dict[str, float]]:
        if self.clip <= 0:
            return list(updates), {}
        out, n = clip_updates(round, ordered_updates(updates), self.clip)
        return out, {"clipped": float(n)}


class FedAvg(_Clipping):
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the updates.

    ``clip`` (default 0: off) bounds each update's step from the base model
    to that L2 norm before averaging.
    """

    name = "fedavg"

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        kept, metrics = self._clipped(round, updates)
        return Aggregate(fedavg(kept), metrics)


class Median(_Clipping):
    """Coordinate-wise median; one vote per trainer, robust to a minority of bad updates.

    ``clip`` (default 0: off) bounds each update's step first.
    """

    name = "median"

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        kept, metrics = self._clipped(round, updates)
        return Aggregate(median(kept), metrics)


class TrimmedMean(_Clipping):
    """Coordinate-wise trimmed mean.

    ``trim`` (default 0.2, in ``[0, 0.5)``) is the fraction of values dropped
    at each end of every coordinate: ``floor(trim * n)`` of ``n`` updates.
    ``clip`` (default 0: off) bounds each update's step first.
    """

    name = "trimmed-mean"

    def __init__(self, trim: float = 0.2, clip: float = 0.0) -> None:
        super().__init__(clip)
        self.trim = check_number("trim", trim, lo=0.0, hi=0.5, hi_open=True)

    def settings(self) -> Mapping[str, ConfigValue]:
        return {"trim": self.trim, **super().settings()}

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        kept, metrics = self._clipped(round, updates)
        return Aggregate(trimmed_mean(kept, self.trim), metrics)
