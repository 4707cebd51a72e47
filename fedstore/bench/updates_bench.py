"""Section ``updates``: lossy update encodings against float32 on the digits task.

The built-in digits task (:mod:`fedstore.demos.digits_task`: 3 trainers,
label-skewed split, the 2,410-parameter MLP, FedAvg) is trained for
``updates_rounds`` rounds once per encoding and seed, through the real round
protocol (:func:`~fedstore.federation.aggregator.lead_rounds` and
:func:`~fedstore.federation.trainer.follow_rounds`) over the in-memory
:class:`~fedstore.federation.fake.FakeNetwork`: the trainers encode with
error feedback, the aggregator decodes and validates every update, global
checkpoints are lossless. float32 (the lossless checkpoint every update was
before) is the baseline, run the same way, side by side.

Figures: the mean payload bytes per update (what the trainer sends inline or
stores by CID), and the held-out accuracy of the final global model, averaged
over ``updates_seeds`` seeds (each seed changes the test split, the
trainers' data and the initial model). Targets: float16 at most 0.5x the
bytes of float32 and at most 0.005 below its accuracy; int8 at most 0.26x
within 0.01. top-k at several fractions gives the bytes/accuracy curve, and
once without error feedback to show what it is worth. The whole UPDATE
message (JSON header included) is in the notes.

The digits model has 2,410 parameters, so the payload's fixed costs and the
statistics of one small trained model weigh in. A second part encodes one
update of a ``model_mb`` MB :func:`~fedstore.bench.common.trained_like`
model (N(0, 0.05) weights, a N(0, 0.001) step) with each encoding: its bytes
against the float32 checkpoint's, and the median time to encode (trainer)
and decode (aggregator) it, float32 being :func:`fedstore.format.encode` /
``decode`` of the full arrays.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.bench.common import (
    MB,
    BenchSizes,
    Row,
    SayFn,
    SectionResult,
    Target,
    median_time,
    trained_like,
)

if TYPE_CHECKING:
    import numpy as np

NAME = "updates"
TITLE = "Compressed updates"

BASELINE = "float32"
#: (variant shown, encoding, error feedback)
VARIANTS: list[tuple[str, str, bool]] = [
    ("float32", "float32", True),
    ("float16", "float16", True),
    ("int8", "int8", True),
    ("int8:256 (per block)", "int8:256", True),
    ("topk:0.3", "topk:0.3", True),
    ("topk:0.1", "topk:0.1", True),
    ("topk:0.03", "topk:0.03", True),
    ("topk:0.01", "topk:0.01", True),
    ("topk:0.03, no error feedback", "topk:0.03", False),
]
#: variant -> (bytes ratio target, allowed accuracy loss)
TARGETS: dict[str, tuple[float, float]] = {"float16": (0.5, 0.005), "int8": (0.26, 0.01)}
TRAINERS = 3
Arrays = dict[str, "np.ndarray"]
#: encodings of the large-model part
LARGE = ["float32", "float16", "int8", "topk:0.01"]


def describe(sizes: BenchSizes) -> str:
    return (
        f"digits task, {TRAINERS} trainers x {sizes.updates_rounds} rounds over the in-memory "
        f"network, {len(VARIANTS)} encodings x {sizes.updates_seeds} seed(s); one update of a "
        f"{sizes.model_mb:g} MB model per encoding, median of {sizes.format_runs}"
    )


@dataclass
class _Run:
    payloads: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    accuracy: float = 0.0
    rejected: int = 0


def _federate(encoding: str, error_feedback: bool, rounds: int, seed: int) -> _Run:
    import trio

    from fedstore.demos.digits_task import DigitsConfig, DigitsTask
    from fedstore.federation.aggregator import lead_rounds
    from fedstore.federation.events import Event, RoundClosed, TrainerUpdated
    from fedstore.federation.fake import FakeNetwork
    from fedstore.federation.messages import UpdateMessage, decode_message
    from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
    from fedstore.federation.trainer import follow_rounds
    from fedstore.federation.update_encoding import UpdateEncoding

    task = DigitsTask(TRAINERS, DigitsConfig(seed=seed))
    run = _Run()
    seen: set[bytes] = set()

    def count(sender: str, receiver: str, data: bytes) -> bool:
        if data not in seen:  # one count per distinct message, not per delivery or re-send
            seen.add(data)
            if isinstance(decode_message(data), UpdateMessage):
                run.messages.append(len(data))
        return False

    net = FakeNetwork(drop=count)
    events: list[Event] = []

    def on_trainer(ev: Event) -> None:
        if isinstance(ev, TrainerUpdated):
            run.payloads.append(ev.size)

    settings = AggregatorSettings(
        rounds=rounds,
        quorum=QuorumSchedule(TRAINERS),
        round_timeout=60.0,
        announce_interval=0.05,
        linger=0.2,
        update_encoding=UpdateEncoding.parse(encoding),
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(1, TRAINERS + 1):
                nursery.start_soon(
                    partial(
                        follow_rounds,
                        net.peer(f"trainer-{i}"),
                        task.trainer(i),
                        TrainerSettings(idle_timeout=60, error_feedback=error_feedback),
                        on_event=on_trainer,
                    )
                )
            result = await lead_rounds(
                net.peer("aggregator"),
                task.initial_arrays(),
                settings,
                evaluate=task.evaluate,
                on_event=events.append,
            )
            if result.status != "complete":
                raise RuntimeError(f"{encoding} federation failed: {result.reason}")
            run.rejected = sum(result.rejections.values())

    trio.run(main)
    closed = [e for e in events if isinstance(e, RoundClosed)]
    run.accuracy = float(closed[-1].metrics["accuracy"])
    return run


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    result = SectionResult(
        NAME,
        TITLE,
        params={
            "task": "digits mlp32",
            "trainers": TRAINERS,
            "rounds": sizes.updates_rounds,
            "seeds": sizes.updates_seeds,
            "strategy": "fedavg",
        },
    )
    seeds = list(range(sizes.updates_seeds))
    runs: dict[str, list[_Run]] = {v: [] for v, _, _ in VARIANTS}
    for seed in seeds:  # variants take turns within each seed
        for variant, encoding, feedback in VARIANTS:
            say(f"{variant}, seed {seed}")
            runs[variant].append(_federate(encoding, feedback, sizes.updates_rounds, seed))
    mean_bytes = {v: statistics.fmean(n for r in rs for n in r.payloads) for v, rs in runs.items()}
    mean_msg = {v: statistics.fmean(n for r in rs for n in r.messages) for v, rs in runs.items()}
    accuracy = {v: statistics.fmean(r.accuracy for r in rs) for v, rs in runs.items()}
    for variant, _, _ in VARIANTS:
        ratio = None if variant == BASELINE else mean_bytes[variant] / mean_bytes[BASELINE]
        target = TARGETS.get(variant)
        result.add(
            Row(
                "bytes per update (payload, mean)",
                variant,
                mean_bytes[variant],
                "B",
                "bytes",
                baseline=None if variant == BASELINE else BASELINE,
                ratio=ratio,
                target=Target("<=", target[0]) if target else None,
            )
        )
    for variant, _, _ in VARIANTS:
        target = TARGETS.get(variant)
        floor = accuracy[BASELINE] - target[1] if target else None
        result.add(
            Row(
                f"final test accuracy (mean of {len(seeds)} seed(s))",
                variant,
                accuracy[variant],
                "accuracy",
                "count",
                baseline=None if variant == BASELINE else BASELINE,
                ratio=None if variant == BASELINE else accuracy[variant] / accuracy[BASELINE],
                target=(
                    Target(">=", floor, on="value", shown=f"float32 - {target[1]:g}")
                    if target and floor is not None
                    else None
                ),
                samples=[r.accuracy for r in runs[variant]],
            )
        )
    result.notes.append(
        "whole UPDATE messages (canonical JSON header + payload), mean bytes: "
        + ", ".join(f"{v} {mean_msg[v]:,.0f}" for v, _, _ in VARIANTS)
    )
    rejected = sum(r.rejected for rs in runs.values() for r in rs)
    if rejected:
        result.notes.append(f"{rejected} update(s) were rejected by the aggregator")
    _large_model(sizes, result, say)
    return result


@dataclass(frozen=True)
class _Codec:
    size: int
    encode: tuple[float, list[float]]  # median, samples
    decode: tuple[float, list[float]]

    def time(self, what: str) -> tuple[float, list[float]]:
        return self.encode if what.startswith("encode") else self.decode


def _time_codec(text: str, base: Arrays, new: Arrays, cap: int, runs: int) -> _Codec:
    from fedstore.federation.messages import decode_tensors, encode_tensors
    from fedstore.federation.update_codec import decode_update, encode_update
    from fedstore.federation.update_encoding import UpdateEncoding

    if text == BASELINE:
        payload = encode_tensors(new)
        return _Codec(
            len(payload),
            median_time(lambda: encode_tensors(new), runs),
            median_time(lambda: decode_tensors(payload, max_decoded_size=cap), runs),
        )
    e = UpdateEncoding.parse(text)
    payload = encode_update(base, new, e)[0]
    return _Codec(
        len(payload),
        median_time(lambda: encode_update(base, new, e), runs),
        median_time(lambda: decode_update(payload, base, e), runs),
    )


def _large_model(sizes: BenchSizes, result: SectionResult, say: SayFn) -> None:
    import numpy as np

    say(f"{sizes.model_mb:g} MB model")
    base = trained_like(int(sizes.model_mb * MB))
    rng = np.random.default_rng(1)
    new = {k: (v + rng.normal(0, 0.001, v.shape).astype(np.float32)) for k, v in base.items()}
    cap = 4 * int(sizes.model_mb * MB) + (1 << 20)
    figures: dict[str, _Codec] = {}
    for text in LARGE:
        say(f"{sizes.model_mb:g} MB model, {text}")
        figures[text] = _time_codec(text, base, new, cap, sizes.format_runs)
    ref = figures[BASELINE]
    for text in LARGE:
        result.add(
            Row(
                f"bytes of one {sizes.model_mb:g} MB model's update",
                text,
                figures[text].size / MB,
                "MB",
                "bytes",
                baseline=None if text == BASELINE else BASELINE,
                ratio=None if text == BASELINE else figures[text].size / ref.size,
            )
        )
    for what in ("encode (trainer)", "decode (aggregator)"):
        for text in LARGE:
            med, samples = figures[text].time(what)
            result.add(
                Row(
                    f"{what}, {sizes.model_mb:g} MB model",
                    text,
                    med,
                    "s",
                    "time",
                    baseline=None if text == BASELINE else BASELINE,
                    ratio=None if text == BASELINE else med / ref.time(what)[0],
                    samples=samples,
                )
            )
