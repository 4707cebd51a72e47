"""Aggregation strategies: FedAvg, coordinate-wise median, trimmed mean.

Every strategy is a pure, deterministic function of its inputs. Updates are
processed in order of sender id (the string sort of the peer id, whatever
order they arrived in), every tensor is accumulated in float64 with a fixed
order of operations, and the result is cast back to the tensor's original
dtype (integer tensors are rounded to nearest first). Any peer that re-runs
the aggregation on the same updates therefore gets the same arrays bit for
bit, hence the same encoded bytes and the same CID.

The updates must already have passed :mod:`fedstore.federation.validation`
(same tensor names, shapes and dtypes, finite values); the functions here
only re-check what they rely on and raise :class:`ValueError` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGGREGATORS",
    "Update",
    "aggregate",
    "fedavg",
    "get_aggregator",
    "median",
    "trimmed_mean",
]

NDArray = npt.NDArray[np.generic]


@dataclass(frozen=True, slots=True)
class Update:
    """One trainer's contribution to a round."""

    sender: str
    num_samples: int
    arrays: Mapping[str, NDArray]
    metrics: Mapping[str, float] = field(default_factory=dict)


Aggregator = Callable[[Sequence[Update]], dict[str, NDArray]]


def _ordered(updates: Sequence[Update]) -> list[Update]:
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    ordered = sorted(updates, key=lambda u: u.sender)
    senders = [u.sender for u in ordered]
    if len(set(senders)) != len(senders):
        raise ValueError("duplicate sender among updates")
    names = sorted(ordered[0].arrays)
    for u in ordered[1:]:
        if sorted(u.arrays) != names:
            raise ValueError(f"update from {u.sender} has different tensor names")
    return ordered


def _cast_back(acc: npt.NDArray[np.float64], like: NDArray) -> NDArray:
    if np.issubdtype(like.dtype, np.integer) or like.dtype == np.bool_:
        acc = np.rint(acc)
    out: NDArray = np.ascontiguousarray(acc.astype(like.dtype))
    return out


def _stack(ordered: Sequence[Update], name: str) -> npt.NDArray[np.float64]:
    ref = ordered[0].arrays[name]
    rows = []
    for u in ordered:
        arr = np.asarray(u.arrays[name])
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise ValueError(f"tensor {name!r} from {u.sender} has another shape or dtype")
        rows.append(arr.astype(np.float64))
    return np.stack(rows, axis=0)


def fedavg(updates: Sequence[Update]) -> dict[str, NDArray]:
    """FedAvg: mean of the updates weighted by their sample counts."""
    ordered = _ordered(updates)
    for u in ordered:
        if u.num_samples < 1:
            raise ValueError(f"update from {u.sender} has num_samples={u.num_samples}")
    total = float(sum(u.num_samples for u in ordered))
    out: dict[str, NDArray] = {}
    for name in sorted(ordered[0].arrays):
        ref = np.asarray(ordered[0].arrays[name])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for u in ordered:
            arr = np.asarray(u.arrays[name])
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise ValueError(f"tensor {name!r} from {u.sender} has another shape or dtype")
            acc += arr.astype(np.float64) * float(u.num_samples)
        out[name] = _cast_back(acc / total, ref)
    return out


def median(updates: Sequence[Update]) -> dict[str, NDArray]:
    """Coordinate-wise median (mean of the two middle values for an even count).

    Ignores sample counts: every trainer has one vote, which is what makes it
    robust to a minority of arbitrary (Byzantine) updates.
    """
    ordered = _ordered(updates)
    out: dict[str, NDArray] = {}
    for name in sorted(ordered[0].arrays):
        stacked = np.sort(_stack(ordered, name), axis=0)
        n = stacked.shape[0]
        mid = n // 2
        med = stacked[mid] if n % 2 else (stacked[mid - 1] + stacked[mid]) * 0.5
        out[name] = _cast_back(med, ordered[0].arrays[name])
    return out


def trimmed_mean(updates: Sequence[Update], beta: float = 0.2) -> dict[str, NDArray]:
    """Coordinate-wise trimmed mean: drop the ``floor(beta * n)`` lowest and highest values.

    ``beta`` is in ``[0, 0.5)``; with few updates (``beta * n < 1``) nothing is
    trimmed and this is the unweighted mean. Sample counts are ignored.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    ordered = _ordered(updates)
    n = len(ordered)
    k = math.floor(beta * n)
    out: dict[str, NDArray] = {}
    for name in sorted(ordered[0].arrays):
        stacked = np.sort(_stack(ordered, name), axis=0)
        kept = stacked[k : n - k]
        acc = np.zeros(kept.shape[1:], dtype=np.float64)
        for row in kept:
            acc += row
        out[name] = _cast_back(acc / float(len(kept)), ordered[0].arrays[name])
    return out


#: name -> strategy, as used by ``--aggregator``
AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": fedavg,
    "median": median,
    "trimmed-mean": trimmed_mean,
}


def get_aggregator(name: str) -> Aggregator:
    """Look a strategy up by name; raises ValueError naming the known ones."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATORS))
        raise ValueError(f"unknown aggregator {name!r}; known: {known}") from None


def aggregate(name: str, updates: Sequence[Update]) -> dict[str, NDArray]:
    """Run the strategy called ``name`` on ``updates``."""
    return get_aggregator(name)(updates)
