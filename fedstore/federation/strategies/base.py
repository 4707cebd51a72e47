"""The :class:`Strategy` protocol and the values that cross it.

A strategy decides two things in every round: what the trainers are told
(:meth:`Strategy.configure_round`, a small mapping of names to strings and
numbers sent in the ``ROUND`` message) and what the admitted updates become
(:meth:`Strategy.aggregate`, the new global arrays plus metrics). It may
carry a :class:`StrategyState` from one round to the next - a server
optimiser's moments, a step counter - which fedstore stores with every global
checkpoint (values in its metadata, arrays in a blob referenced there by
CID), so an aggregator restarted from its last checkpoint, or any peer
re-computing a round, starts from exactly the state the round used.

Contracts every strategy keeps, because fedstore's aggregates are checked by
CID:

* **Deterministic.** ``aggregate``'s arrays and state are a function of the
  round context (number, base model, state) and the updates alone, computed
  with a fixed order of operations (sort by sender, accumulate in float64),
  so any process gets the same bytes. ``failures`` may only make it decline
  (arrays None) or change its metrics: peers do not see the same failures.
* **Same model layout.** The arrays have the base model's names, shapes and
  dtypes, and finite values; fedstore checks and refuses otherwise.
* **Settings are constructor parameters.** ``settings()`` returns them
  (strings and numbers) such that ``type(s)(**s.settings())`` is an equal
  strategy; they are recorded in every global checkpoint.
* **Named.** ``name`` is the name it is registered under in the
  ``fedstore.strategies`` entry-point group (see
  :mod:`fedstore.federation.strategies.registry`).

:class:`BaseStrategy` supplies the defaults (no round config, no state,
trainer metrics averaged by sample count); subclasses implement
``aggregate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "Aggregate",
    "BaseStrategy",
    "ConfigValue",
    "Failure",
    "NDArray",
    "RoundConfig",
    "RoundContext",
    "Strategy",
    "StrategyState",
    "Update",
    "cast_back",
    "check_number",
    "clip_updates",
    "ordered_updates",
    "stack_tensor",
    "weighted_mean_metrics",
]

NDArray: TypeAlias = npt.NDArray[np.generic]
#: A value of a round config, a strategy setting or a state value.
ConfigValue: TypeAlias = str | int | float
#: What :meth:`Strategy.configure_round` returns: sent to trainers with the round.
RoundConfig: TypeAlias = Mapping[str, ConfigValue]


@dataclass(frozen=True, slots=True)
class Update:
    """One trainer's admitted contribution to a round."""

    sender: str
    num_samples: int
    arrays: Mapping[str, NDArray]
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StrategyState:
    """What a strategy carries between rounds.

    ``values`` (strings and numbers) are stored in the global checkpoint's
    metadata; ``arrays`` (e.g. an optimiser's moment vectors) in a separate
    content-addressed blob whose CID the metadata names. Both must be exactly
    what the next round computes with: cast arrays to their stored dtype
    before returning them.
    """

    values: Mapping[str, ConfigValue] = field(default_factory=dict)
    arrays: Mapping[str, NDArray] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.values and not self.arrays


@dataclass(frozen=True, slots=True)
class RoundContext:
    """The round a strategy is asked about: number, base model, carried state."""

    round: int
    base_cid: str
    #: the global model the round started from (round - 1), read-only
    base: Mapping[str, NDArray]
    #: the state stored with the base model (empty at the start of a federation)
    state: StrategyState = field(default_factory=StrategyState)


class Failure(Protocol):
    """An update refused in this round (see :class:`fedstore.federation.validation.Rejection`)."""

    @property
    def sender(self) -> str: ...

    @property
    def round(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def detail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What :meth:`Strategy.aggregate` returns.

    ``arrays`` None declines the round (``reason`` says why): no global model
    is made and the aggregator re-opens the round like one that got too few
    updates. ``state`` None keeps the state unchanged.
    """

    arrays: dict[str, NDArray] | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    state: StrategyState | None = None
    reason: str = ""


@runtime_checkable
class Strategy(Protocol):
    """How a federation turns admitted updates into the next global model (module docstring)."""

    @property
    def name(self) -> str:
        """The name registered in the ``fedstore.strategies`` group (recorded per checkpoint)."""
        ...

    def settings(self) -> Mapping[str, ConfigValue]:
        """The constructor parameters that made this strategy, canonical (see module doc)."""
        ...

    def configure_round(self, round: RoundContext) -> RoundConfig:
        """The config sent to trainers with ``round`` (``train(arrays, round, config)``).

        At most 32 entries; names like metric names (``[A-Za-z0-9_.-]{1,64}``),
        values strings (up to 256 characters), integers or finite floats.
        Deterministic in ``round`` (it is recorded in the checkpoint).
        """
        ...

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        """The round's new global arrays (or None to decline), metrics and state.

        ``updates`` are admitted (validated against the model) and sorted by
        sender; there is at least one. ``failures`` are this round's refused
        updates, as this aggregator saw them.
        """
        ...

    def aggregate_metrics(self, updates: Sequence[Update]) -> dict[str, float]:
        """The trainers' reported metrics combined into one value per name."""
        ...


class BaseStrategy:
    """Defaults for a :class:`Strategy`: no settings, no round config, weighted-mean metrics."""

    name: ClassVar[str] = ""

    def settings(self) -> Mapping[str, ConfigValue]:
        return {}

    def configure_round(self, round: RoundContext) -> RoundConfig:
        return {}

    def aggregate(
        self, round: RoundContext, updates: Sequence[Update], failures: Sequence[Failure]
    ) -> Aggregate:
        raise NotImplementedError

    def aggregate_metrics(self, updates: Sequence[Update]) -> dict[str, float]:
        return weighted_mean_metrics(updates)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.settings().items()))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, BaseStrategy)
        return dict(self.settings()) == dict(other.settings())

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.settings().items()))))


# -- helpers for implementations ---------------------------------------------------------


def check_number(
    setting: str,
    value: object,
    *,
    lo: float,
    hi: float,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in the interval; ValueError otherwise.

    The message names the setting and the interval (``trim must be a number
    in [0, 0.5), got 0.7``). Booleans are not numbers here.
    """
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    want = f"{setting} must be a number in {left}{lo:g}, {hi:g}{right}, got {value!r:.40}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(want)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(want)
    if f < lo or f > hi or (lo_open and f == lo) or (hi_open and f == hi):
        raise ValueError(want)
    return f


def ordered_updates(updates: Sequence[Update]) -> list[Update]:
    """``updates`` sorted by sender, checked: at least one, unique senders, same tensor names."""
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


def cast_back(acc: npt.NDArray[np.float64], like: NDArray) -> NDArray:
    """A float64 result in ``like``'s dtype (integers and booleans rounded to nearest first)."""
    if np.issubdtype(like.dtype, np.integer) or like.dtype == np.bool_:
        acc = np.rint(acc)
    out: NDArray = np.ascontiguousarray(acc.astype(like.dtype))
    return out


def stack_tensor(ordered: Sequence[Update], name: str) -> npt.NDArray[np.float64]:
    """Tensor ``name`` of every update, as float64 rows in the given order (shapes checked)."""
    ref = np.asarray(ordered[0].arrays[name])
    rows = []
    for u in ordered:
        arr = np.asarray(u.arrays[name])
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise ValueError(f"tensor {name!r} from {u.sender} has another shape or dtype")
        rows.append(arr.astype(np.float64))
    return np.stack(rows, axis=0)


def clip_updates(
    round: RoundContext, updates: Sequence[Update], clip: float
) -> tuple[list[Update], int]:
    """Bound every update's step from the base model to L2 norm ``clip``; deterministic.

    The step of an update is ``update - base`` over its floating-point
    tensors (integer and boolean tensors are left as they are); its norm is
    accumulated in float64 over the tensors in name order (numpy's pairwise
    sum within a tensor, not BLAS, so the bits are the same anywhere). A step
    longer than ``clip`` is scaled down to exactly ``clip`` and the tensors
    cast back to their dtype. Returns the updates (in the given order) and
    how many were clipped. ``clip`` <= 0 returns them unchanged.
    """
    if clip <= 0:
        return list(updates), 0
    out: list[Update] = []
    clipped = 0
    for u in updates:
        names = sorted(n for n in u.arrays if np.asarray(round.base[n]).dtype.kind in "fc")
        deltas: dict[str, npt.NDArray[np.float64]] = {}
        sq = 0.0
        for n in names:
            d = np.asarray(u.arrays[n]).astype(np.float64) - np.asarray(round.base[n]).astype(
                np.float64
            )
            deltas[n] = d
            sq += float(np.sum(d * d))
        norm = math.sqrt(sq)
        if norm <= clip or not math.isfinite(norm):
            out.append(u)
            continue
        scale = clip / norm
        arrays = dict(u.arrays)
        for n in names:
            base = np.asarray(round.base[n])
            arrays[n] = cast_back(base.astype(np.float64) + deltas[n] * scale, base)
        out.append(Update(u.sender, u.num_samples, arrays, u.metrics))
        clipped += 1
    return out, clipped


def weighted_mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Each metric name's mean over the updates reporting it, weighted by their sample counts.

    Deterministic: updates in sender order, float64 accumulation. Names no
    update reports are absent; non-finite results are dropped.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for u in sorted(updates, key=lambda u: u.sender):
        for name in sorted(u.metrics):
            value = float(u.metrics[name])
            if not math.isfinite(value):
                continue
            sums[name] = sums.get(name, 0.0) + value * float(u.num_samples)
            weights[name] = weights.get(name, 0.0) + float(u.num_samples)
    out: dict[str, float] = {}
    for name in sorted(sums):
        if weights[name] > 0:
            mean = sums[name] / weights[name]
            if math.isfinite(mean):
                out[name] = mean
    return out
