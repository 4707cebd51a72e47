"""The faults ``fedstore simulate --fault`` (and ``demo --fault``) can inject, and the plan.

A fault is one ``--fault`` value (repeatable, one of each kind):

* ``aggregator-crash@R``: the process that opens round R (the round's
  aggregator) is SIGKILLed mid-round, once it has admitted an update;
* ``intruder``: a node that is not in the manifest (no manifest, its own
  identity) connects to the members, answers every ``ROUND`` with signed
  poisoned updates and announces checkpoints of its own (``CID:`` messages);
* ``poison:N``: trainer N (a member) sends poisoned updates: its honest step
  sign-flipped and scaled by :data:`POISON_FACTOR`;
* ``lying-aggregator@R``: the aggregator first in round R's duty order
  announces a global model that is not the aggregate
  (:attr:`fedstore.federation.rounds.MemberOptions.tamper`).

With any fault the simulation runs as a federation with a manifest
(:func:`plan_federation`): ``--aggregators`` aggregator-capable processes
plus the trainers are its members, the owner's key and the signed manifest
are written to the report directory. The run itself is
:mod:`fedstore.demos.fault_run`; its report :mod:`fedstore.demos.fault_report`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedstore.errors import ConfigError

if TYPE_CHECKING:
    from fedstore.federation.manifest import SignedManifest
    from fedstore.federation.membership import Membership

__all__ = [
    "CRASH",
    "FAULT_HELP",
    "INTRUDER",
    "LIE",
    "POISON",
    "POISON_FACTOR",
    "Fault",
    "FederationPlan",
    "MemberProc",
    "check_faults",
    "lie_arrays",
    "parse_fault",
    "plan_federation",
    "poison_arrays",
]

CRASH = "aggregator-crash"
INTRUDER = "intruder"
POISON = "poison"
LIE = "lying-aggregator"

#: a poisoned trainer sends base + POISON_FACTOR * (its honest step)
POISON_FACTOR = -10.0
#: what a lying aggregator adds to every weight of the aggregate
LIE_SHIFT = 0.25
#: fewest aggregator-capable members each fault needs (a crash needs a standby to spare)
MIN_AGGREGATORS = {CRASH: 3, LIE: 2, INTRUDER: 1, POISON: 1}

FAULT_HELP = (
    "inject a fault (repeatable, one of each kind): aggregator-crash@R (SIGKILL of round R's "
    "aggregator), intruder (a non-member peer sends updates and CID announcements), poison:N "
    "(trainer N sends sign-flipped, scaled updates), lying-aggregator@R (round R's aggregator "
    "announces a model that is not the aggregate); runs the federation with a manifest"
)

_SYNTAX = re.compile(r"^(?P<kind>[a-z-]+)(?:(?P<sep>[@:])(?P<arg>.*))?$")


@dataclass(frozen=True, slots=True)
class Fault:
    """One parsed ``--fault`` value."""

    kind: str
    #: the round (aggregator-crash, lying-aggregator) or trainer number (poison)
    arg: int = 0

    @property
    def text(self) -> str:
        if self.kind in (CRASH, LIE):
            return f"{self.kind}@{self.arg}"
        if self.kind == POISON:
            return f"{self.kind}:{self.arg}"
        return self.kind


def parse_fault(text: str) -> Fault:
    """``aggregator-crash@4`` -> ``Fault("aggregator-crash", 4)``; ConfigError (one line) if bad."""
    usage = "expected aggregator-crash@R, intruder, poison:N or lying-aggregator@R"
    m = _SYNTAX.match(text.strip())
    if m is None:
        raise ConfigError(f"--fault {text!r}: {usage}")
    kind, sep, arg = m["kind"], m["sep"], m["arg"]
    wants = {CRASH: "@", LIE: "@", POISON: ":", INTRUDER: None}
    if kind not in wants:
        raise ConfigError(f"--fault {text!r}: unknown fault {kind!r}; {usage}")
    if wants[kind] is None:
        if sep:
            raise ConfigError(f"--fault {text!r}: intruder takes no argument")
        return Fault(kind)
    what = "trainer number" if kind == POISON else "round"
    if sep != wants[kind] or not arg or not arg.isdigit() or int(arg) < 1:
        raise ConfigError(f"--fault {text!r}: give {kind}{wants[kind]}N with N a {what} from 1")
    return Fault(kind, int(arg))


def check_faults(
    faults: Sequence[Fault], *, rounds: int, trainers: int, aggregators: int
) -> dict[str, Fault]:
    """The faults by kind, checked against the run's size (ConfigError, one line)."""
    by_kind: dict[str, Fault] = {}
    for f in faults:
        if f.kind in by_kind:
            raise ConfigError(f"--fault {f.kind} is given twice; one of each kind")
        by_kind[f.kind] = f
        if f.kind in (CRASH, LIE) and f.arg > rounds:
            raise ConfigError(f"--fault {f.text}: the run has {rounds} round(s)")
        if f.kind == POISON and f.arg > trainers:
            raise ConfigError(f"--fault {f.text}: there are {trainers} trainer(s)")
        need = MIN_AGGREGATORS[f.kind]
        if aggregators < need:
            raise ConfigError(
                f"--fault {f.text} needs at least {need} aggregator-capable members "
                f"(--aggregators {aggregators})"
            )
    crash, lie = by_kind.get(CRASH), by_kind.get(LIE)
    if crash and lie and crash.arg == lie.arg:
        raise ConfigError("--fault: a crash and a lie in the same round; pick different rounds")
    if POISON in by_kind and trainers < 3:
        raise ConfigError("--fault poison:N needs at least 3 trainers (2 honest against 1)")
    return by_kind


def poison_arrays(
    base: Mapping[str, npt.NDArray[np.generic]], trained: Mapping[str, npt.NDArray[np.generic]]
) -> dict[str, npt.NDArray[np.generic]]:
    """A poisoned update: ``base + POISON_FACTOR * (trained - base)`` (same names and dtypes)."""
    out: dict[str, npt.NDArray[np.generic]] = {}
    for name, new in trained.items():
        old = base[name]
        step = new.astype(np.float64) - old.astype(np.float64)
        out[name] = (old.astype(np.float64) + POISON_FACTOR * step).astype(new.dtype)
    return out


def lie_arrays(arrays: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
    """What a lying aggregator publishes instead of the aggregate: every weight shifted."""
    return {k: (v + np.asarray(LIE_SHIFT, v.dtype)).astype(v.dtype) for k, v in arrays.items()}


@dataclass(frozen=True, slots=True)
class MemberProc:
    """One process of a fault run: its name, role, identity and where it listens."""

    name: str
    role: str  # "aggregator" | "trainer" | "intruder"
    index: int
    peer_id: str
    port: int
    data_dir: Path
    #: the address it listens on (127.0.0.1, or its network-namespace host's)
    host: str = "127.0.0.1"
    #: the command prefix that runs it on its host (``ip netns exec NS``; none on loopback)
    prefix: tuple[str, ...] = ()

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"


@dataclass
class FederationPlan:
    """The members, the signed manifest and who does what wrong (see :func:`plan_federation`)."""

    procs: dict[str, MemberProc]
    signed: SignedManifest
    manifest_path: Path
    owner_dir: Path
    faults: dict[str, Fault]
    #: the member that lies (first in the lie round's duty order), if any
    liar: str | None = None
    poisoned: str | None = None
    intruder: str | None = None
    #: each process on its own network-namespace host, with its own filesystem root
    netns: bool = False

    @property
    def membership(self) -> Membership:
        from fedstore.federation.membership import Membership

        return Membership(self.signed)

    @property
    def members(self) -> list[MemberProc]:
        return [p for p in self.procs.values() if p.role != "intruder"]

    def name_of(self, peer_id: str) -> str:
        for p in self.procs.values():
            if p.peer_id == peer_id:
                return p.name
        return peer_id[-10:]

    def hostile(self) -> set[str]:
        """Names of the processes that misbehave on purpose (not held to the run's outcome)."""
        return {n for n in (self.liar, self.intruder) if n}


def _below_ephemeral() -> tuple[int, int]:
    """A port range outside the kernel's ephemeral range (outgoing connections never take it)."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    high = max(2048, first)
    return max(1024, high - 12000), high


def free_port(taken: set[int]) -> int:
    """A TCP port on 127.0.0.1 free right now, not in ``taken`` (the process binds it soon after).

    Chosen below the ephemeral range: between this check and the process
    binding it, no outgoing connection on the machine can be given it.
    """
    import random

    low, high = _below_ephemeral()
    for _ in range(200):
        port = random.randrange(low, high)  # noqa: S311 (a port, not a secret)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    with socket.socket() as s:  # a crowded range: let the kernel pick one
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    taken.add(port)
    return port


def plan_federation(
    faults: Mapping[str, Fault],
    *,
    work: Path,
    out: Path,
    aggregators: int,
    trainers: int,
    rounds: int,
    round_timeout: float,
    quorum: int,
    strategy: str,
    strategy_settings: Mapping[str, str | int | float],
    update_encoding: str,
    initial: Mapping[str, npt.NDArray[np.generic]],
    name: str,
    hosts: Mapping[str, tuple[str, tuple[str, ...]]] | None = None,
) -> FederationPlan:
    """Identities, ports and the signed manifest of a fault run.

    Every process's identity is created in its data directory under
    ``work`` (the node uses it); the owner's key and ``manifest.json`` go to
    ``out/federation``. Members: ``agg-1..agg-A`` (aggregator role) and
    ``trainer-1..trainer-N`` (trainer role); the intruder (``intruder``
    fault) gets an identity that is not listed. ``hosts`` (process name ->
    address, command prefix) puts each process on a host of its own (network
    namespaces), all listening on port 4001; otherwise they share 127.0.0.1.
    """
    from fedstore.federation.manifest import (
        Manifest,
        initial_cid,
        sign_manifest,
        write_manifest_file,
    )
    from fedstore.federation.manifest import Member as ManifestMember
    from fedstore.federation.membership import Membership
    from fedstore.federation.signing import load_signer

    procs: dict[str, MemberProc] = {}
    ports: set[int] = set()
    layout = [("aggregator", f"agg-{i}", i) for i in range(1, aggregators + 1)]
    layout += [("trainer", f"trainer-{i}", i) for i in range(1, trainers + 1)]
    if INTRUDER in faults:
        layout.append(("intruder", "intruder", 0))
    for role, pname, index in layout:
        data_dir = work / pname
        peer_id = load_signer(data_dir).peer_id
        if hosts is not None:
            host, prefix = hosts[pname]
            procs[pname] = MemberProc(pname, role, index, peer_id, 4001, data_dir, host, prefix)
        else:
            procs[pname] = MemberProc(pname, role, index, peer_id, free_port(ports), data_dir)
    fed_dir = out / "federation"
    owner_dir = fed_dir / "owner"
    owner = load_signer(owner_dir)
    members = tuple(
        sorted(
            (
                ManifestMember(p.peer_id, frozenset({p.role}))
                for p in procs.values()
                if p.role != "intruder"
            ),
            key=lambda m: m.peer,
        )
    )
    manifest = Manifest(
        name=name,
        owner=owner.peer_id,
        members=members,
        strategy=strategy,
        strategy_settings=dict(strategy_settings),
        rounds=rounds,
        round_timeout=round_timeout,
        quorum=quorum,
        initial=initial_cid(initial),
        update_encoding=update_encoding,
    ).check()
    signed = sign_manifest(manifest, owner)
    path = fed_dir / "manifest.json"
    write_manifest_file(path, signed)
    plan = FederationPlan(procs, signed, path, owner_dir, dict(faults), netns=hosts is not None)
    if LIE in faults:
        first = Membership(signed).duty_order(faults[LIE].arg)[0]
        plan.liar = next(p.name for p in procs.values() if p.peer_id == first)
    if POISON in faults:
        plan.poisoned = f"trainer-{faults[POISON].arg}"
    if INTRUDER in faults:
        plan.intruder = "intruder"
    return plan
