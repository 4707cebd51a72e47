"""Admission of trainers' updates into a round.

The aggregator keeps one :class:`RoundValidator` per open round. Every
offered update is checked against the global model's tensor layout (the
:class:`ModelSpec`: names, shapes, dtypes), the open round, the sender, the
sample count and the values (no NaN or Inf). An update that fails is
rejected: nothing of it reaches the aggregation, one log line says who sent
what and why, and the reason is counted in :attr:`RoundValidator.rejections`
(and in a process-wide :class:`RejectionCounter` if one is passed).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from fedstore.federation.strategies.base import Update

__all__ = [
    "ModelSpec",
    "RejectReason",
    "Rejection",
    "RejectionCounter",
    "RoundValidator",
    "TensorSpec",
]

log = logging.getLogger(__name__)


class RejectReason(StrEnum):
    """Why an update was not admitted (the values are the counter keys)."""

    MALFORMED = "malformed"  # the message itself did not parse
    UNKNOWN_ROUND = "unknown_round"  # not the round that is open
    DUPLICATE_SENDER = "duplicate_sender"  # this sender already has an update in the round
    SENDER_MISMATCH = "sender_mismatch"  # envelope sender differs from the signing peer
    BAD_SAMPLES = "bad_samples"  # num_samples outside the accepted range
    WRONG_NAMES = "wrong_names"  # tensor names differ from the model's
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NON_FINITE = "non_finite"  # NaN or Inf in a tensor
    FETCH_FAILED = "fetch_failed"  # an update by CID could not be fetched or verified
    BUSY_SENDER = "busy_sender"  # the sender's previous update is still in work: dropped
    # federations with a manifest
    NOT_TRAINER = "not_trainer"  # the sender is not a member with the trainer role
    WRONG_RUN = "wrong_run"  # another federation (manifest CID) or run (session)
    BAD_SIGNATURE = "bad_signature"  # the sender's signature over its update claim is invalid
    BAD_ENCODING = "bad_encoding"  # a lossy encoding not in use, or a payload that does not decode


@dataclass(frozen=True, slots=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Tensor names, shapes and dtypes every update of a federation must have."""

    tensors: Mapping[str, TensorSpec]

    @classmethod
    def of(cls, arrays: Mapping[str, npt.NDArray[np.generic]]) -> ModelSpec:
        return cls(
            {
                name: TensorSpec(tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str)
                for name, a in sorted(arrays.items())
            }
        )

    def problem(
        self, arrays: Mapping[str, npt.NDArray[np.generic]]
    ) -> tuple[RejectReason, str] | None:
        """Why ``arrays`` do not fit this model (names, dtype, shape, NaN or Inf), or None.

        Pure, but it reads every value: code on the event loop runs it in a
        worker thread (see :meth:`RoundValidator.offer`'s ``tensors_checked``).
        """
        names = sorted(arrays)
        expected = sorted(self.tensors)
        if names != expected:
            missing = sorted(set(expected) - set(names))[:5]
            extra = sorted(set(names) - set(expected))[:5]
            return RejectReason.WRONG_NAMES, f"missing {missing}, unexpected {extra}"
        for name in names:
            arr = np.asarray(arrays[name])
            want = self.tensors[name]
            if arr.dtype.str != want.dtype:
                return (
                    RejectReason.WRONG_DTYPE,
                    f"{name}: dtype {arr.dtype.str}, expected {want.dtype}",
                )
            if tuple(arr.shape) != want.shape:
                return (
                    RejectReason.WRONG_SHAPE,
                    f"{name}: shape {tuple(arr.shape)}, expected {want.shape}",
                )
            if arr.dtype.kind in "fc" and not bool(np.isfinite(arr).all()):
                return RejectReason.NON_FINITE, f"{name} has NaN or Inf"
        return None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    sender: str
    round: int
    detail: str

    def __str__(self) -> str:
        return f"rejected update from {self.sender} for round {self.round}: {self.reason}: " + (
            self.detail
        )


class RejectionCounter(Counter[str]):
    """Rejections by reason over the life of a process."""


@dataclass(slots=True)
class RoundValidator:
    """Admits updates for one open round; keeps the accepted ones and the rejection counts."""

    spec: ModelSpec
    round: int
    max_samples: int = 10**9
    totals: RejectionCounter | None = None
    accepted: dict[str, Update] = field(default_factory=dict)
    rejections: Counter[str] = field(default_factory=Counter)
    log_rejections: list[Rejection] = field(default_factory=list)

    def count(self, reason: RejectReason) -> None:
        """Count a dropped update without a log line (floods are logged by the caller)."""
        self.rejections[reason.value] += 1
        if self.totals is not None:
            self.totals[reason.value] += 1

    def reject(self, reason: RejectReason, sender: str, round: int, detail: str) -> Rejection:
        """Record a rejection (also usable for messages rejected before decoding)."""
        rej = Rejection(reason, sender, round, detail)
        self.rejections[reason.value] += 1
        if self.totals is not None:
            self.totals[reason.value] += 1
        if len(self.log_rejections) < 1000:
            self.log_rejections.append(rej)
        log.warning("%s", rej)
        return rej

    def check_header(
        self, *, sender: str, round: int, num_samples: int, transport_sender: str | None = None
    ) -> Rejection | None:
        """Checks that need no tensors (run them before fetching or decoding anything)."""
        if transport_sender is not None and transport_sender != sender:
            return self.reject(
                RejectReason.SENDER_MISMATCH,
                sender,
                round,
                f"message signed by {transport_sender}",
            )
        if round != self.round:
            return self.reject(
                RejectReason.UNKNOWN_ROUND, sender, round, f"round {self.round} is open"
            )
        if sender in self.accepted:
            return self.reject(
                RejectReason.DUPLICATE_SENDER, sender, round, "already has an update in this round"
            )
        if not 1 <= num_samples <= self.max_samples:
            return self.reject(
                RejectReason.BAD_SAMPLES,
                sender,
                round,
                f"num_samples={num_samples} outside [1, {self.max_samples}]",
            )
        return None

    def check_tensors(
        self, sender: str, round: int, arrays: Mapping[str, npt.NDArray[np.generic]]
    ) -> Rejection | None:
        """Check ``arrays`` against the model (:meth:`ModelSpec.problem`); reject on a problem."""
        problem = self.spec.problem(arrays)
        return None if problem is None else self.reject(problem[0], sender, round, problem[1])

    def offer(
        self,
        update: Update,
        *,
        round: int,
        transport_sender: str | None = None,
        tensors_checked: bool = False,
    ) -> bool:
        """Admit ``update`` for ``round`` if it passes every check; True if accepted.

        ``tensors_checked=True`` skips the tensor checks: the caller already
        found no :meth:`ModelSpec.problem` with the update's arrays (the
        aggregator does that in a worker thread, since it reads every value).
        """
        if (
            self.check_header(
                sender=update.sender,
                round=round,
                num_samples=update.num_samples,
                transport_sender=transport_sender,
            )
            is not None
        ):
            return False
        if not tensors_checked and self.check_tensors(update.sender, round, update.arrays):
            return False
        self.accepted[update.sender] = update
        return True

    @property
    def senders(self) -> list[str]:
        return sorted(self.accepted)
