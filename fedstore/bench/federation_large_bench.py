"""Section ``federation-large``: a federation of a large model over bitswap only.

An aggregator and ``federation_trainers`` trainers, each a separate process
(:mod:`fedstore.bench.large_worker`) running a fedstore node on 127.0.0.1
with the backend chain ``bitswap`` alone, its own data directory and no
shared filesystem root: every model and update travels between the
processes' block stores. The model is ``federation_mb`` MB of float32 in
four large layers; ``train`` only scales the weights, so a round is made of
moving, checking, encoding and storing the model. The aggregator saves round
0 before the trainers start (they fetch it when they join), then runs
``federation_rounds`` rounds of FedAvg with a quorum of every trainer.
Updates are far above the pubsub inline limit, so each travels by CID (the
trainer stores it in its block store, the aggregator fetches it by bitswap).

Per round (medians over the rounds are shown) the round's time on the
aggregator, open to closed, and its parts, each the slowest trainer's for
the trainer steps: *transfer* of the base model (for round 1: the join-time
sync of round 0), *store + load* of it (CID checks, write, decode),
*train*, *encode* and *upload* of the update, then on the aggregator the
*transfer* of the updates (first fetch start to last fetch end), their
*verify* (decode, NaN/shape scan), *aggregate* and *save* of the new global
model. The *sum of the parts* is the critical path if nothing overlapped;
the round's time over it says how much was lost between the steps.

Each process reads its own peak resident set (``VmHWM``); target: at most
three times the model's size.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedstore.bench.common import MB, MIB, BenchSizes, Row, SayFn, SectionResult, Target

__all__ = [
    "NAME",
    "TITLE",
    "LargeRun",
    "Worker",
    "describe",
    "round_parts",
    "run",
    "run_federation",
]

NAME = "federation-large"
TITLE = "Large-model federation (bitswap only)"

LAYERS = 4
RSS_TARGET = Target("<=", 3.0)
OVERHEAD_TARGET = Target("<=", 1.1)
#: trainer steps (slowest trainer counts) then aggregator steps, in round order
TRAINER_PARTS = ("transfer", "store+load", "train", "encode", "upload")
AGGREGATOR_PARTS = ("transfer", "verify", "aggregate", "save")


def describe(sizes: BenchSizes) -> str:
    return (
        f"aggregator + {sizes.federation_trainers} trainer processes on 127.0.0.1, bitswap only, "
        f"{sizes.federation_mb:g} MB float32 model, {sizes.federation_rounds} rounds"
    )


class Worker:
    """One ``large_worker`` process; its JSON lines are collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: IO[str] = log.open("w+", encoding="utf-8")  # closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=dict(env),
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"large-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self._queue.put(obj)
        self._queue.put(None)

    def wait_for(self, kind: str, deadline: float) -> dict[str, Any]:
        """The next event of ``kind`` (earlier ones are kept in :attr:`events`)."""
        while True:
            left = deadline - time.monotonic()
            try:
                obj = self._queue.get(timeout=max(0.01, left)) if left > 0 else None
            except queue.Empty:
                obj = None
            if obj is None:
                state = "exited" if self.proc.poll() is not None else "timed out"
                raise RuntimeError(
                    f"{self.name} {state} before its {kind!r} event; stderr tail:\n"
                    f"{self.stderr_tail()}"
                )
            self.events.append(obj)
            if obj.get("event") == "error":
                raise RuntimeError(
                    f"{self.name}: {obj.get('message')}; stderr tail:\n{self.stderr_tail()}"
                )
            if obj.get("event") == kind:
                return obj

    def stderr_tail(self, lines: int = 15) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return "".join(self._stderr.readlines()[-lines:])

    def close_stdin(self) -> None:
        """End the process's input (the aggregator then stops serving and exits)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def close(self) -> None:
        self.close_stdin()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@dataclass
class LargeRun:
    """Everything the processes of one federation reported."""

    model_mb: float
    rounds: int
    trainers: int
    seconds: float
    #: process name ("aggregator", "trainer1", ...) -> its events in order
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def done(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events[name] if e.get("event") == "done")

    @property
    def final_cid(self) -> str:
        return str(self.done("aggregator")["final_cid"])

    def trainer_names(self) -> list[str]:
        return [n for n in self.events if n != "aggregator"]

    def peak_rss(self) -> dict[str, int]:
        """Process name -> its peak resident set (``VmHWM``, else ``ru_maxrss``) in bytes."""
        out = {}
        for name in self.events:
            d = self.done(name)
            out[name] = int(d.get("vm_hwm") or d["ru_maxrss"])
        return out

    def phases(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events[name] if e.get("event") == "phase"]

    def round_seconds(self) -> dict[int, float]:
        return {
            int(e["round"]): float(e["seconds"])
            for e in self.events["aggregator"]
            if e.get("event") == "round_closed"
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_mb": self.model_mb,
            "rounds": self.rounds,
            "trainers": self.trainers,
            "seconds": self.seconds,
            "events": self.events,
        }


def _span(phases: Iterable[dict[str, Any]]) -> float:
    """Seconds from the first start to the last end (0 for none)."""
    items = list(phases)
    if not items:
        return 0.0
    return max(float(p["end"]) for p in items) - min(float(p["start"]) for p in items)


def _total(phases: Iterable[dict[str, Any]]) -> float:
    return sum(float(p["end"]) - float(p["start"]) for p in phases)


def round_parts(run: LargeRun, rnd: int) -> dict[str, float]:
    """Round ``rnd``'s steps in seconds: ``trainer <step>`` (slowest), ``aggregator <step>``.

    The aggregator's ``transfer`` is the span from its first update fetch's
    start to its last one's end; its other steps are summed.
    """
    parts: dict[str, float] = {}
    for step in TRAINER_PARTS:
        kinds = ("store", "load") if step == "store+load" else (step,)
        parts[f"trainer {step}"] = max(
            (
                _total(p for p in run.phases(t) if p["round"] == rnd and p["phase"] in kinds)
                for t in run.trainer_names()
            ),
            default=0.0,
        )
    agg = [p for p in run.phases("aggregator") if p["round"] == rnd]
    parts["aggregator transfer"] = _span(p for p in agg if p["phase"] == "transfer")
    parts["aggregator verify"] = sum(verify_seconds(run, rnd).values())
    for step in AGGREGATOR_PARTS[2:]:
        parts[f"aggregator {step}"] = _total(p for p in agg if p["phase"] == step)
    return parts


def _upload_cids(run: LargeRun, rnd: int) -> dict[str, str]:
    """Trainer name -> the CID of its update of round ``rnd``."""
    out = {}
    for t in run.trainer_names():
        for p in run.phases(t):
            if p["round"] == rnd and p["phase"] == "upload" and p.get("cid"):
                out[t] = str(p["cid"])
    return out


def verify_seconds(run: LargeRun, rnd: int) -> dict[str, float]:
    """Trainer name -> seconds from the aggregator's fetch of its update to its acceptance."""
    ids = {
        t: next((e.get("peer_id") for e in run.events[t] if e.get("event") == "ready"), None)
        for t in run.trainer_names()
    }
    fetched = {
        p.get("cid"): float(p["end"])
        for p in run.phases("aggregator")
        if p["round"] == rnd and p["phase"] == "transfer"
    }
    accepted = {
        e.get("sender"): float(e["at"])
        for e in run.events["aggregator"]
        if e.get("event") == "update_accepted" and e.get("round") == rnd
    }
    out = {}
    for t, cid in _upload_cids(run, rnd).items():
        if cid in fetched and ids[t] in accepted:
            out[t] = max(0.0, accepted[ids[t]] - fetched[cid])
    return out


def critical_path(run: LargeRun, rnd: int) -> float:
    """The round's time if nothing waited: the slowest trainer's chain, then the rest.

    For each trainer: its own steps of the round (transfer, store, load,
    train, encode, upload), then the aggregator's fetch and verify of that
    trainer's update; the longest of these, plus the aggregate and save.
    Steps of different processes that overlap are not counted twice.
    """
    agg = [p for p in run.phases("aggregator") if p["round"] == rnd]
    fetch = {
        p.get("cid"): float(p["end"]) - float(p["start"]) for p in agg if p["phase"] == "transfer"
    }
    verify = verify_seconds(run, rnd)
    cids = _upload_cids(run, rnd)
    chains = []
    for t in run.trainer_names():
        mine = [p for p in run.phases(t) if p["round"] == rnd and p["phase"] in _CHAIN]
        chains.append(_total(mine) + fetch.get(cids.get(t), 0.0) + verify.get(t, 0.0))
    tail = _total(p for p in agg if p["phase"] in ("aggregate", "save"))
    return max(chains, default=0.0) + tail


_CHAIN = ("transfer", "store", "load", "train", "encode", "upload")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    for key in ("FEDSTORE_FS_ROOT", "FEDSTORE_BACKENDS", "BOOTSTRAP_ADDR", "FEDSTORE_LISTEN"):
        env.pop(key, None)  # nothing shared between the processes but loopback
    env["FEDSTORE_REANNOUNCE_INTERVAL"] = "0"
    return env


def run_federation(
    workdir: Path,
    *,
    model_mb: float,
    rounds: int,
    trainers: int,
    timeout: float | None = None,
    log_level: str = "WARNING",
    say: SayFn = lambda _: None,
) -> LargeRun:
    """Run one federation (see the module docstring); every process is stopped on return."""
    timeout = timeout or 120.0 + rounds * trainers * model_mb * 0.5
    deadline = time.monotonic() + timeout
    env = _worker_env()
    common = ["--rounds", str(rounds), "--model-mb", f"{model_mb:g}", "--layers", str(LAYERS)]
    common += ["--round-timeout", f"{max(60.0, timeout / max(1, rounds)):.0f}"]
    common += ["--log-level", log_level]
    worker = [sys.executable, "-m", "fedstore.bench.large_worker"]
    workers: dict[str, Worker] = {}
    start = time.monotonic()
    try:
        say(f"aggregator saves a {model_mb:g} MB round 0")
        workers["aggregator"] = agg = Worker(
            "aggregator",
            [
                *worker,
                "aggregator",
                "--data-dir",
                str(workdir / "aggregator"),
                "--trainers",
                str(trainers),
                *common,
            ],
            env,
            workdir / "aggregator.log",
        )
        addr = agg.wait_for("ready", deadline)["addr"]
        for i in range(1, trainers + 1):
            name = f"trainer{i}"
            workers[name] = Worker(
                name,
                [
                    *worker,
                    "trainer",
                    "--data-dir",
                    str(workdir / name),
                    "--bootstrap",
                    addr,
                    "--index",
                    str(i),
                    *common,
                ],
                env,
                workdir / f"{name}.log",
            )
        for rnd in range(1, rounds + 1):
            say(f"round {rnd}/{rounds}")
            agg.wait_for("round_closed", deadline)
        for w in workers.values():
            w.wait_for("done", deadline)
        seconds = time.monotonic() - start
        agg.close_stdin()
        agg.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return LargeRun(
            model_mb, rounds, trainers, seconds, {n: w.events for n, w in workers.items()}
        )
    finally:
        for w in workers.values():
            w.close()


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    rounds, trainers = int(sizes.federation_rounds), int(sizes.federation_trainers)
    result = SectionResult(
        NAME,
        TITLE,
        params={
            "model_mb": sizes.federation_mb,
            "rounds": rounds,
            "trainers": trainers,
            "layers": LAYERS,
            "backends": "bitswap",
        },
    )
    run_ = run_federation(
        workdir, model_mb=sizes.federation_mb, rounds=rounds, trainers=trainers, say=say
    )
    result.params["run"] = run_.to_dict()
    add_rows(result, run_)
    return result


def add_rows(result: SectionResult, run_: LargeRun) -> None:
    """The table's rows and notes for one run."""
    model = run_.model_mb * MB
    finals = {t: run_.done(t)["final_cid"] for t in run_.trainer_names()}
    agreed = all(c == run_.final_cid for c in finals.values())
    result.params["final_cid"] = run_.final_cid
    result.params["trainers_on_final_cid"] = agreed
    rounds = sorted(r for r in run_.round_seconds() if r >= 1)
    per_round = {r: round_parts(run_, r) for r in rounds}
    seconds = run_.round_seconds()
    measure = "round time (median over rounds)"
    med_round = statistics.median(seconds[r] for r in rounds)
    paths = [critical_path(run_, r) for r in rounds]
    result.add(
        Row(
            measure,
            "critical path (no waiting)",
            statistics.median(paths),
            "s",
            "time",
            samples=paths,
            note="slowest trainer's steps + the aggregator's fetch and verify of its update, "
            "aggregate, save",
        )
    )
    result.add(
        Row(
            measure,
            "round, aggregator open → closed",
            med_round,
            "s",
            "time",
            baseline="critical path (no waiting)",
            ratio=statistics.median(seconds[r] / c for r, c in zip(rounds, paths, strict=True)),
            target=OVERHEAD_TARGET,
            samples=[seconds[r] for r in rounds],
        )
    )
    for part in per_round[rounds[0]]:
        values = [per_round[r][part] for r in rounds]
        result.add(
            Row(measure, f"of which {part}", statistics.median(values), "s", "time", samples=values)
        )
    measure_m = "peak resident set (VmHWM)"
    result.add(Row(measure_m, "model size", model / MIB, "MiB", "memory"))
    at_start = [
        int(e["vm_rss"])
        for t in run_.trainer_names()
        for e in run_.events[t]
        if e.get("event") == "ready" and e.get("vm_rss")
    ]
    if at_start:
        result.add(
            Row(
                measure_m,
                "a trainer at start (node running, no model yet)",
                statistics.median(at_start) / MIB,
                "MiB",
                "memory",
                baseline="model size",
                ratio=statistics.median(at_start) / model,
            )
        )
    for name, peak in run_.peak_rss().items():
        result.add(
            Row(
                measure_m,
                name,
                peak / MIB,
                "MiB",
                "memory",
                baseline="model size",
                ratio=peak / model,
                target=RSS_TARGET,
                note=f"CPU {float(run_.done(name)['cpu']):.1f} s",
            )
        )
    result.notes.append(
        f"{run_.trainers} trainers, {len(rounds)} rounds of a {run_.model_mb:g} MB model over "
        f"bitswap in {run_.seconds:.1f} s; every trainer ended on the aggregator's final CID: "
        f"{'yes' if agreed else 'NO'} ({run_.final_cid})"
    )
    result.notes.append(
        "round time per round: "
        + ", ".join(
            f"{r}: {seconds[r]:.2f} s (critical path {c:.2f} s)"
            for r, c in zip(rounds, paths, strict=True)
        )
        + "; round 1's trainer transfer is the join-time sync of round 0"
    )
