"""Section ``swarm``: many trainers fetch a new global model at once over capped links.

An aggregator and up to ``swarm_trainers`` trainers, each a ``fedstore node``
process with ``--backends bitswap`` in its own Linux network namespace (own
data directory and filesystem root), on one bridge; every host's link is
capped at ``swarm_rate`` in each direction with ``tc tbf``
(:mod:`fedstore.netns`). The aggregator saves a new model of
``swarm_mb`` MB; N = 1, 2, 4, 8 trainers run ``checkpoint_fetch <cid>`` at
the same moment. Measured per run:

* the time until the *last* of the N trainers holds the verified model (its
  ``FETCHED=`` line; the chain verified every byte against the CID);
* the bytes the aggregator's link sent meanwhile (``tx_bytes`` of its
  interface: every protocol, headers included).

Two topologies, side by side in one run:

* **star**: trainers are connected to the aggregator only, so every byte
  comes from it (what a central server does). Done first.
* **fedstore**: then the trainers are connected to each other as well; every
  peer that holds blocks serves them (bitswap with rarest-first block order
  and HAVE announcements of newly received blocks).

Each run uses a new model (new random weights, new CID), so nothing is
already held. Targets: fedstore's time(8)/time(1) <= 2.5 (star: near 8), and
the aggregator sends at most 2x the model for N = 8. Needs root (namespaces
and tc); elsewhere the section is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedstore.bench.common import MB, BenchSizes, Row, SayFn, SectionResult, Target
from fedstore.netns import Lan, bridged_hosts, ns_argv, tx_bytes, unavailable_reason
from fedstore.node.driver import NodeProcess, python_env

__all__ = [
    "NAME",
    "TITLE",
    "SwarmLab",
    "SwarmRun",
    "describe",
    "run",
    "swarm_counts",
]

NAME = "swarm"
TITLE = "Swarm distribution (namespaces, capped links)"

PORT = 4001
RATE = "25mbit"
RATE_BYTES = 25e6 / 8
TIME_TARGET = Target("<=", 2.5)
BYTES_TARGET = Target("<=", 2.0)
START_TIMEOUT = 90.0


def swarm_counts(trainers: int) -> list[int]:
    """N = 1, 2, 4, 8, ... up to *trainers* (always including *trainers*)."""
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n < trainers]
    return [*counts, trainers]


def describe(sizes: BenchSizes) -> str:
    counts = ", ".join(map(str, swarm_counts(sizes.swarm_trainers)))
    return (
        f"aggregator + {sizes.swarm_trainers} trainer processes in network namespaces, "
        f"{sizes.swarm_mb:g} MB model, N = {counts}, links capped at {RATE} each way"
    )


@dataclass
class SwarmRun:
    """One simultaneous fetch by *n* trainers."""

    mode: str  # "fedstore" or "star"
    n: int
    cid: str
    model_bytes: int
    seconds: float
    aggregator_bytes: int
    cpu_seconds: float
    #: trainer name -> {peer id: blocks it delivered}, from the trainer's log
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    aggregator_id: str = ""

    def blocks_from_aggregator(self) -> int:
        return sum(s.get(self.aggregator_id, 0) for s in self.sources.values())

    def blocks_from_trainers(self) -> int:
        return sum(
            n for s in self.sources.values() for p, n in s.items() if p != self.aggregator_id
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process *pid* so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fetched_from(node: NodeProcess, cid: str) -> dict[str, int]:
    """Blocks per peer from the node's ``bitswap fetched <cid>`` log line."""
    for line in reversed(node.stderr_tail(50_000).splitlines()):
        if f"bitswap fetched {cid}:" in line and "from peers: " in line:
            peers = line.split("from peers: ", 1)[1].split(";")[0]
            return {p: int(n) for p, n in re.findall(r"(\w+)=(\d+)", peers)}
    return {}


def _weights(path: Path, nbytes: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, w=rng.standard_normal(max(nbytes // 4, 1)).astype(np.float32))
    return path


class SwarmLab:
    """An aggregator and trainers as node processes on a capped, bridged LAN."""

    def __init__(self, lan: Lan, workdir: Path, trainers: int, stack: ExitStack) -> None:
        self.lan = lan
        self.workdir = workdir
        self._stack = stack
        self.round = 0
        self.aggregator = self._start("agg", ["--role", "bootstrap"])
        self.agg_addr = self.aggregator.expect("LISTENING", timeout=START_TIMEOUT)
        self.agg_id = self.agg_addr.rsplit("/", 1)[1]
        self.trainers = [
            self._start(f"t{i}", ["--role", "trainer", "--bootstrap", self.agg_addr])
            for i in range(1, trainers + 1)
        ]
        self.addrs = [t.expect("LISTENING", timeout=START_TIMEOUT) for t in self.trainers]
        for t in self.trainers:
            t.expect("CONNECTED", self.agg_id.__eq__, timeout=START_TIMEOUT)
        self.meshed = False

    def _start(self, host: str, args: list[str]) -> NodeProcess:
        data = self.workdir / host
        env = python_env(
            {
                "FEDSTORE_BACKENDS": "bitswap",
                "FEDSTORE_REANNOUNCE_INTERVAL": "0",
                "FEDSTORE_CONNECT_TIMEOUT": "20",
            },
            root=data / "fsroot",  # its own filesystem root (unused: bitswap only)
        )
        listen = f"/ip4/{self.lan.addrs[host]}/tcp/{PORT}"
        node = NodeProcess(
            host, ["--dir", str(data), "--listen", listen, "--log-level", "INFO", *args], env
        )
        node.argv = [*ns_argv(self.lan.namespaces[host]), *node.argv]
        self._stack.callback(node.close)
        return node.start()

    @property
    def nodes(self) -> list[NodeProcess]:
        return [self.aggregator, *self.trainers]

    def mesh(self) -> None:
        """Connect every trainer to every other one (the aggregator link stays)."""

        def dial(i: int) -> None:
            for j in range(i):
                self.trainers[i].run(f"connect {self.addrs[j]}", timeout=START_TIMEOUT)

        with ThreadPoolExecutor(max_workers=max(1, len(self.trainers))) as pool:
            list(pool.map(dial, range(len(self.trainers))))
        self.meshed = True

    def new_model(self, nbytes: int) -> tuple[str, int]:
        """Save a new model on the aggregator; return (cid, stored bytes)."""
        self.round += 1
        path = _weights(self.workdir / f"model{self.round}.npz", nbytes, seed=self.round)
        lines = self.aggregator.run(f"checkpoint_save {self.round} {path}", timeout=120)
        cid = next(ln.value for ln in lines if ln.key == "SAVED").split(":", 1)[1]
        path.unlink()
        stored = next((self.workdir / "agg" / "rounds").glob(f"round_{self.round:06d}_{cid}.*"))
        return cid, stored.stat().st_size

    def fetch_at_once(self, n: int, cid: str, model_bytes: int, mode: str) -> SwarmRun:
        """Trainers 1..n fetch *cid* at the same moment; measure until the last has it."""
        group = self.trainers[:n]
        for t in group:  # they know the round, so the fetched file is stored as it
            t.expect("HEARD", lambda v: v.startswith(f"{self.round}:{cid}:"), timeout=60)
        timeout = 60 + 4 * n * model_bytes / RATE_BYTES
        agg_ns = self.lan.namespaces["agg"]
        sent0 = tx_bytes(agg_ns)
        cpu0 = sum(_cpu_seconds(node.pid) for node in self.nodes)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            outputs = list(
                pool.map(lambda t: t.run(f"checkpoint_fetch {cid}", timeout=timeout), group)
            )
        ends = [next(ln.at for ln in out if ln.key == "FETCHED") for out in outputs]
        seconds = max(ends) - start
        sent = tx_bytes(agg_ns) - sent0
        cpu = sum(_cpu_seconds(node.pid) for node in self.nodes) - cpu0
        return SwarmRun(
            mode=mode,
            n=n,
            cid=cid,
            model_bytes=model_bytes,
            seconds=seconds,
            aggregator_bytes=sent,
            cpu_seconds=cpu,
            sources={t.name: _fetched_from(t, cid) for t in group},
            aggregator_id=self.agg_id,
        )


@contextmanager
def swarm_lab(workdir: Path, trainers: int, rate: str | None = RATE) -> Iterator[SwarmLab]:
    """Namespaces, links and node processes; all removed on exit, whatever happens."""
    hosts = ["agg", *(f"t{i}" for i in range(1, trainers + 1))]
    with bridged_hosts(hosts, rate=rate) as lan, ExitStack() as stack:
        yield SwarmLab(lan, workdir, trainers, stack)


def measure(
    workdir: Path,
    counts: Sequence[int],
    model_mb: float,
    say: Callable[[str], None] = lambda _: None,
    modes: Sequence[str] = ("star", "fedstore"),
) -> list[SwarmRun]:
    """Every count in every mode (star first: the mesh cannot be undone)."""
    nbytes = int(model_mb * MB)
    runs: list[SwarmRun] = []
    with swarm_lab(workdir, max(counts)) as lab:
        for mode in sorted(modes, key=lambda m: m != "star"):
            if mode == "fedstore" and not lab.meshed:
                say("connecting the trainers to each other")
                lab.mesh()
            for n in counts:
                say(f"{mode}: {n} trainer(s) fetch a new {model_mb:g} MB model")
                cid, stored = lab.new_model(nbytes)
                runs.append(lab.fetch_at_once(n, cid, stored, mode))
    return runs


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    counts = swarm_counts(int(sizes.swarm_trainers))
    result = SectionResult(
        NAME,
        TITLE,
        params={"trainers": counts, "model_mb": sizes.swarm_mb, "rate": RATE, "port": PORT},
    )
    reason = unavailable_reason(RATE)
    if reason is not None:
        result.notes.append(f"skipped: {reason}")
        return result
    say("building network namespaces")
    runs = measure(workdir, counts, sizes.swarm_mb, say)
    _rows(result, runs)
    return result


def _rows(result: SectionResult, runs: list[SwarmRun]) -> None:
    model = runs[0].model_bytes
    top = max(r.n for r in runs)
    result.params["model_bytes"] = model
    by = {(r.mode, r.n): r for r in runs}
    measure_t = "time until the last trainer holds the verified model"
    for mode in ("fedstore", "star"):
        base = by.get((mode, 1))
        for r in sorted((r for r in runs if r.mode == mode), key=lambda r: r.n):
            variant = f"{mode} N={r.n}"
            is_base = base is r
            result.add(
                Row(
                    measure_t,
                    variant,
                    r.seconds,
                    "s",
                    "time",
                    baseline=None if is_base or base is None else f"{mode} N=1",
                    ratio=None if is_base or base is None else r.seconds / base.seconds,
                    target=TIME_TARGET if mode == "fedstore" and r.n == top else None,
                    note=f"{r.n * model / MB / r.seconds:.1f} MB/s delivered in total",
                )
            )
    measure_b = "bytes the aggregator sent"
    result.add(Row(measure_b, "model size", model / MB, "MB", "bytes"))
    for mode in ("fedstore", "star"):
        for r in sorted((r for r in runs if r.mode == mode), key=lambda r: r.n):
            result.add(
                Row(
                    measure_b,
                    f"{mode} N={r.n}",
                    r.aggregator_bytes / MB,
                    "MB",
                    "bytes",
                    baseline="model size",
                    ratio=r.aggregator_bytes / model,
                    target=BYTES_TARGET if mode == "fedstore" and r.n == top else None,
                    note=(
                        f"blocks from the aggregator {r.blocks_from_aggregator()}, "
                        f"from trainers {r.blocks_from_trainers()}; "
                        f"CPU of all nodes {r.cpu_seconds:.1f} s"
                    ),
                )
            )
    star_top, fed_top = by.get(("star", top)), by.get(("fedstore", top))
    if star_top and fed_top and by.get(("star", 1)) and by.get(("fedstore", 1)):
        result.notes.append(
            f"N={top}: fedstore {fed_top.seconds:.1f} s "
            f"({fed_top.seconds / by[('fedstore', 1)].seconds:.2f}x its N=1), star "
            f"{star_top.seconds:.1f} s ({star_top.seconds / by[('star', 1)].seconds:.2f}x); "
            f"the aggregator sent {fed_top.aggregator_bytes / model:.2f}x the model "
            f"(star {star_top.aggregator_bytes / model:.2f}x); fedstore N={top}: "
            f"{fed_top.blocks_from_aggregator()} blocks from the aggregator, "
            f"{fed_top.blocks_from_trainers()} from other trainers; CPU of all nodes "
            f"{fed_top.cpu_seconds:.1f} s (star {star_top.cpu_seconds:.1f} s)"
        )
    result.notes.append(
        f"links {RATE} each way (tc tbf, both directions); model {model / MB:.1f} MB stored; "
        "bytes sent are the aggregator interface's tx_bytes (all traffic, headers included)"
    )
