"""Admission of updates: every rejection reason, logged and counted."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedstore.federation.strategies import Update
from fedstore.federation.validation import (
    ModelSpec,
    RejectionCounter,
    RejectReason,
    RoundValidator,
)

MODEL = {
    "w": np.zeros((4, 3), np.float32),
    "b": np.zeros(3, np.float32),
}


def _good(sender: str = "peer-a", n: int = 10) -> Update:
    return Update(sender, n, {k: np.ones_like(v) for k, v in MODEL.items()})


@pytest.fixture
def validator() -> RoundValidator:
    return RoundValidator(ModelSpec.of(MODEL), round=3, totals=RejectionCounter())


def test_accepts_good_updates(validator: RoundValidator) -> None:
    assert validator.offer(_good("b"), round=3, transport_sender="b")
    assert validator.offer(_good("a"), round=3)
    assert validator.senders == ["a", "b"]
    assert not validator.rejections


def _bad_cases() -> list[tuple[str, Update, int, str | None, RejectReason]]:
    nan = {k: np.ones_like(v) for k, v in MODEL.items()}
    nan["w"][1, 1] = np.nan
    inf = {k: np.ones_like(v) for k, v in MODEL.items()}
    inf["b"][0] = -np.inf
    return [
        ("wrong round", _good(), 4, None, RejectReason.UNKNOWN_ROUND),
        ("spoofed sender", _good("peer-a"), 3, "peer-x", RejectReason.SENDER_MISMATCH),
        ("zero samples", _good(n=0), 3, None, RejectReason.BAD_SAMPLES),
        ("missing tensor", Update("p", 1, {"w": MODEL["w"]}), 3, None, RejectReason.WRONG_NAMES),
        (
            "extra tensor",
            Update("p", 1, {**MODEL, "extra": np.zeros(1, np.float32)}),
            3,
            None,
            RejectReason.WRONG_NAMES,
        ),
        (
            "wrong shape",
            Update("p", 1, {"w": np.zeros((3, 4), np.float32), "b": MODEL["b"]}),
            3,
            None,
            RejectReason.WRONG_SHAPE,
        ),
        (
            "wrong dtype",
            Update("p", 1, {"w": np.zeros((4, 3), np.float64), "b": MODEL["b"]}),
            3,
            None,
            RejectReason.WRONG_DTYPE,
        ),
        ("nan", Update("p", 1, nan), 3, None, RejectReason.NON_FINITE),
        ("inf", Update("p", 1, inf), 3, None, RejectReason.NON_FINITE),
    ]


@pytest.mark.parametrize(
    ("label", "update", "rnd", "transport", "reason"),
    _bad_cases(),
    ids=[c[0] for c in _bad_cases()],
)
def test_rejections_are_logged_and_counted(
    validator: RoundValidator,
    caplog: pytest.LogCaptureFixture,
    label: str,
    update: Update,
    rnd: int,
    transport: str | None,
    reason: RejectReason,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedstore.federation.validation"):
        assert not validator.offer(update, round=rnd, transport_sender=transport)
    assert validator.accepted == {}
    assert validator.rejections == {reason.value: 1}
    assert validator.totals == {reason.value: 1}
    assert len(caplog.records) == 1
    assert reason.value in caplog.records[0].getMessage()
    assert update.sender in caplog.records[0].getMessage()


def test_duplicate_sender_keeps_the_first(validator: RoundValidator) -> None:
    first = _good("a")
    second = Update("a", 99, {k: np.full_like(v, 5.0) for k, v in MODEL.items()})
    assert validator.offer(first, round=3)
    assert not validator.offer(second, round=3)
    assert validator.accepted["a"] is first
    assert validator.rejections[RejectReason.DUPLICATE_SENDER.value] == 1


def test_totals_accumulate_across_rounds() -> None:
    totals = RejectionCounter()
    spec = ModelSpec.of(MODEL)
    for rnd in (1, 2):
        v = RoundValidator(spec, rnd, totals=totals)
        v.offer(_good(), round=rnd + 1)
    assert totals[RejectReason.UNKNOWN_ROUND.value] == 2


def test_model_spec_is_order_independent() -> None:
    assert ModelSpec.of(MODEL) == ModelSpec.of(dict(reversed(list(MODEL.items()))))
    assert ModelSpec.of(MODEL) != ModelSpec.of({**MODEL, "b": np.zeros(4, np.float32)})
