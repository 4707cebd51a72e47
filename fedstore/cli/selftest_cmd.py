"""``fedstore selftest``: the original manual test harness, as a command.

Part A runs one real node in this process (a temporary data directory and
filesystem-backend root) and drives every runner command through the same
code the ``Command>`` prompt uses: checkpoint save, load, fetch, prune and
sync, data integrity (loaded arrays equal the saved ones; the file on disk
hashes to its CID), bad input that must not kill the node, and a restart that
keeps the peer id and resumes.

Part B starts a bootstrap and a trainer as separate ``fedstore node``
processes on loopback and drives them by their status lines: connect, join,
publish, save, sync, leave; then checks both data directories and that both
exit cleanly. Everything runs in a temporary directory that is removed at
the end (``--keep`` keeps it). Only the filesystem backend is used, so no
remote service is touched.

Prints one line per check and the pass count and rate; exit code 0 only if
every check passed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedstore.cli.node_cmd import CommandRunner, Output, demo_weights
from fedstore.config import NodeConfig

__all__ = ["register", "run"]

TIMEOUT = 40.0


@dataclass
class Checks:
    """Pass/fail bookkeeping with one printed line per check."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)
    quiet: bool = False
    #: every check as (name, ok, detail), for --json
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, "" if ok else detail))
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        if not self.quiet:
            mark = "✓" if ok else "✗"
            print(f"  {mark} {name}" + (f": {detail}" if detail and not ok else ""), flush=True)
        return ok

    def attempt(self, name: str, fn: Callable[[], object]) -> None:
        try:
            result = fn()
        except Exception as exc:  # a failing step is a failed check, never a crash
            self.check(name, False, f"{type(exc).__name__}: {exc}")
        else:
            self.check(name, result is not False, "returned False")

    @property
    def total(self) -> int:
        return self.passed + len(self.failed)


class _Recorder(Output):
    """Machine-mode output that keeps events instead of printing them."""

    def __init__(self) -> None:
        super().__init__(machine=True, stream=io.StringIO())
        self.events: list[tuple[str, str]] = []

    def event(self, key: str, value: object, human: str | None = None) -> None:
        self.events.append((key, str(value)))

    def since(self, mark: int, key: str) -> list[str]:
        return [v for k, v in self.events[mark:] if k == key]


def _file_cid_ok(path: Path, cid: str) -> bool:
    from fedstore.ipld.cid import cid_of_file, parse_cid

    return cid_of_file(path, parse_cid(cid).version) == cid


# -- part A -----------------------------------------------------------------------------


async def _part_a(base: Path, checks: Checks) -> None:
    import numpy as np

    from fedstore.node import open_node

    cfg = NodeConfig(
        role="trainer",
        data_dir=base / "a",
        backends=("filesystem",),
        reannounce_interval=0,
        settings={"FEDSTORE_FS_ROOT": str(base / "fsroot")},
    )
    rec = _Recorder()
    async with open_node(cfg, on_event=rec.node_event) as node:
        runner = CommandRunner(node, rec)

        async def cmd(line: str) -> list[tuple[str, str]]:
            mark = len(rec.events)
            ok = await runner.execute(line)
            out = rec.events[mark:]
            checks.check(f"command '{line}'", ok, "; ".join(v for k, v in out if k == "ERROR"))
            return out

        checks.check(
            "node starts and prints its peer id", rec.since(0, "PEER_ID") == [node.peer_id]
        )
        addrs = rec.since(0, "LISTENING")
        checks.check(
            "listening address is a full multiaddr",
            bool(addrs) and addrs[0].endswith(f"/p2p/{node.peer_id}"),
            str(addrs),
        )
        key = cfg.data_dir / "identity.key"
        checks.check(
            "identity key is mode 0600", key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
        )
        for line in [
            "help",
            "local",
            "peers",
            "topics",
            "join fed-learn",
            "publish fed-learn hi",
            "leave fed-learn",
            "advertize",
            "heads",
            "wait_peers 0",
        ]:
            await cmd(line)
        saved: dict[int, str] = {}
        for r in (1, 2, 3):
            out = await cmd(f"checkpoint_save {r}")
            values = [v for k, v in out if k == "SAVED"]
            if values:
                saved[r] = values[0].split(":", 1)[1]
            checks.check(
                f"round {r} announced after saving",
                any(k == "ANNOUNCED" and v == f"{r}:{saved.get(r)}" for k, v in out),
            )
        pins = await node.catalog.pins_for(saved.get(3, ""))
        checks.check(
            "pin state recorded for the backend",
            [(p.backend, p.state) for p in pins] == [("filesystem", "pinned")],
            str(pins),
        )
        out = await cmd("rounds")
        checks.check("rounds lists 1,2,3", ("ROUNDS", "1,2,3") in out, str(out))
        for r in (1, 3):
            ckpt = await node.load_checkpoint(r)
            same = all(np.array_equal(ckpt.arrays[n], a) for n, a in demo_weights(r).items())
            checks.check(f"round {r} loads with identical arrays", same)
        await cmd("checkpoint_load")
        checks.check(
            "checkpoint_load without a round loads the latest",
            any(k == "LOADED" and v.startswith(f"3:{saved.get(3)}") for k, v in rec.events),
        )
        head = await node.head()
        path = node.store.dir / (await node.store.latest()).path  # type: ignore[union-attr]
        checks.check(
            "checkpoint file on disk hashes to its CID",
            head is not None and _file_cid_ok(path, head.cid),
        )
        out = await cmd(f"checkpoint_fetch {saved.get(2)}")
        checks.check(
            "checkpoint_fetch returns verified bytes",
            any(k == "FETCHED" and v.startswith(f"{saved.get(2)}:") for k, v in out),
        )
        await cmd("cids")
        out = await cmd("checkpoint_prune 2")
        checks.check("prune keeps the last 2 rounds", ("PRUNED", "1") in out, str(out))
        out = await cmd("rounds")
        checks.check("rounds after prune are 2,3", ("ROUNDS", "2,3") in out, str(out))
        await cmd("sync")
        for bad in [
            "bogus",
            "checkpoint_save x",
            "checkpoint_load 99",
            "connect nowhere",
            "checkpoint_fetch not-a-cid",
            "publish",
        ]:
            mark = len(rec.events)
            ok = await runner.execute(bad)
            checks.check(
                f"bad command '{bad}' fails cleanly", not ok and bool(rec.since(mark, "ERROR"))
            )
        checks.check("node still answers after bad commands", await runner.execute("local"))
        first_id = node.peer_id
    rec2 = _Recorder()
    async with open_node(cfg, on_event=rec2.node_event) as node:
        checks.check("restart keeps the peer id", node.peer_id == first_id)
        checks.check("restart resumes from round 3", rec2.since(0, "RESUMED") == ["3"])


# -- part B -----------------------------------------------------------------------------


def _part_b(base: Path, checks: Checks) -> None:
    from fedstore.node.driver import NodeProcess, python_env

    env = python_env(
        {"FEDSTORE_BACKENDS": "filesystem", "FEDSTORE_REANNOUNCE_INTERVAL": "0"},
        root=base / "fsroot-b",
    )
    boot = NodeProcess("bootstrap", ["--role", "bootstrap", "--dir", str(base / "boot")], env)
    trainer = NodeProcess("trainer", ["--role", "trainer", "--dir", str(base / "trainer")], env)
    with boot, trainer:
        addr = boot.expect("LISTENING", timeout=TIMEOUT)
        boot_id = boot.expect("PEER_ID", timeout=TIMEOUT)
        checks.check("bootstrap prints its full multiaddr", addr.endswith(f"/p2p/{boot_id}"), addr)
        trainer_id = trainer.expect("PEER_ID", timeout=TIMEOUT)
        checks.attempt(
            "trainer connects to the bootstrap",
            lambda: trainer.run(f"connect {addr}", timeout=TIMEOUT),
        )
        checks.attempt(
            "bootstrap sees the trainer",
            lambda: boot.expect("CONNECTED", lambda v: v == trainer_id, timeout=TIMEOUT),
        )
        for node in (boot, trainer):
            checks.attempt(
                f"{node.name} joins fed-learn",
                functools.partial(node.run, "join fed-learn", timeout=TIMEOUT),
            )
        checks.attempt(
            "fed-learn mesh forms",
            lambda: trainer.run("wait_peers 1 fed-learn 30", timeout=TIMEOUT),
        )
        text = f"selftest message {time.time():.0f}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        mark = boot.mark()
        checks.attempt(
            "trainer publishes", lambda: trainer.run(f"publish fed-learn {text}", timeout=TIMEOUT)
        )
        checks.attempt(
            "bootstrap receives it intact, from the trainer",
            lambda: boot.expect(
                "RECEIVED",
                lambda v: v == f"fed-learn:{trainer_id}:{len(text)}:{digest}",
                since=mark,
                timeout=TIMEOUT,
            ),
        )
        checks.attempt(
            "model-cids mesh forms",
            lambda: trainer.run("wait_peers 1 model-cids 30", timeout=TIMEOUT),
        )
        saved: list[str] = []

        def save() -> None:
            out = trainer.run("checkpoint_save 1", timeout=TIMEOUT)
            saved.extend(ln.value for ln in out if ln.key == "SAVED")

        checks.attempt("trainer saves round 1", save)
        cid = saved[0].split(":", 1)[1] if saved else "?"
        checks.attempt(
            "bootstrap hears the announcement",
            lambda: boot.expect("HEARD", lambda v: v == f"1:{cid}:{trainer_id}", timeout=TIMEOUT),
        )
        synced: list[str] = []
        checks.attempt(
            "bootstrap syncs round 1",
            lambda: synced.extend(
                ln.value for ln in boot.run("sync", timeout=TIMEOUT) if ln.key == "SYNCED"
            ),
        )
        checks.check("synced round and CID match", synced == [f"1:{cid}"], str(synced))
        for node in (boot, trainer):
            checks.attempt(
                f"{node.name} leaves fed-learn",
                functools.partial(node.run, "leave fed-learn", timeout=TIMEOUT),
            )

        def exit_cleanly(node: NodeProcess) -> None:
            node.run("exit", timeout=TIMEOUT)
            code = node.stop()
            if code != 0:
                raise RuntimeError(f"exit code {code}")

        for node in (boot, trainer):
            checks.attempt(f"{node.name} exits cleanly", functools.partial(exit_cleanly, node))
    files = {
        name: sorted((base / name / "rounds").glob(f"round_000001_{cid}.*"))
        for name in ("boot", "trainer")
    }
    checks.check(
        "both data directories hold round 1", all(len(f) == 1 for f in files.values()), str(files)
    )
    if all(len(f) == 1 for f in files.values()):
        checks.check(
            "both copies are byte-identical and match the CID",
            files["boot"][0].read_bytes() == files["trainer"][0].read_bytes()
            and _file_cid_ok(files["boot"][0], cid),
        )
    for name in ("boot", "trainer"):
        key = base / name / "identity.key"
        checks.check(
            f"{name} identity key is mode 0600",
            key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600,
        )


def run(args: argparse.Namespace) -> int:
    import trio

    base = Path(tempfile.mkdtemp(prefix="fedstore-selftest-"))
    checks = Checks(quiet=args.json)

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    started = time.monotonic()
    try:
        if args.part in ("A", "all"):
            say("Part A: one node, every runner command")
            try:
                trio.run(_part_a, base, checks)
            except Exception as exc:
                checks.check("part A ran to the end", False, f"{type(exc).__name__}: {exc}")
        if args.part in ("B", "all"):
            say("Part B: bootstrap and trainer processes on loopback")
            try:
                _part_b(base, checks)
            except Exception as exc:
                checks.check("part B ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    rate = 100.0 * checks.passed / checks.total if checks.total else 0.0
    if args.json:
        import json

        doc = {
            "passed": checks.passed,
            "total": checks.total,
            "seconds": round(time.monotonic() - started, 1),
            "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.results],
        }
        print(json.dumps(doc, indent=2))
        return 0 if not checks.failed else 1
    print(
        f"\nPassed {checks.passed}/{checks.total} checks ({rate:.1f}%) "
        f"in {time.monotonic() - started:.1f} s"
    )
    if checks.failed:
        print("Failed: " + "; ".join(checks.failed), file=sys.stderr)
    return 0 if not checks.failed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "selftest",
        help="check an installation end to end (one node, then two processes on loopback)",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--part", choices=["A", "B", "all"], default="all", help="which part to run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=run)
