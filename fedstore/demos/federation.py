"""Simulated federations on loopback: an aggregator and trainers as separate processes.

``fedstore simulate --app MODULE:OBJ`` (and ``fedstore demo``, which is the
same run of the built-in digits app, :mod:`fedstore.demos.digits`) starts,
on 127.0.0.1, one aggregator and ``--trainers`` trainer processes (``python
-m fedstore.demos.federation_worker``), each a full fedstore node with its
own data directory and catalog, all storing through the filesystem backend
in a shared temporary root (or the ``--backends`` you name). Every process
loads the same app; trainer ``i`` of ``N`` gets ``TrainerContext(i, N)``.
Trainer ``--late-trainer`` stays offline until the round before
``--late-round``; then it starts, asks its peers for the head, fetches it by
CID, and takes part from ``--late-round`` on.

A live view shows each round (participants, the app's evaluation metrics,
its baseline if it has one, the trainers' metrics, CID, bytes stored) and
each process. At the end a report directory (``--out``) holds
``METRIC.png`` (the primary metric per round, baseline dashed), a copy of
the aggregator's catalog, ``summary.json`` and ``summary.md``; ``--export
FILE`` writes the final model as a weights file. Exit status 0 means the
federation completed and every peer ended on the aggregator's final CID.

With ``--fault`` the run is a federation with a manifest instead, with the
faults injected (:mod:`fedstore.demos.fault_demo`): exit status 0 means it
survived them as designed.

Settings (``simulate``): flags > environment > ``.env`` > the
``[federation]`` table of ``fedstore.toml`` > the app's defaults. ``demo``
takes its flags only (it always runs the digits app).

This module runs the processes; :mod:`fedstore.demos.federation_state`
folds their JSON-line events into the run's state and
:mod:`fedstore.demos.federation_view` renders it and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.errors import ConfigError

if TYPE_CHECKING:  # trio and the run's state load when it runs, not for `fedstore --help`
    import trio

    from fedstore.app import App
    from fedstore.demos.federation_state import DemoState, Proc

__all__ = ["DIGITS_APP", "add_arguments", "add_demo_arguments", "run", "run_demo"]

MAX_LINE = 1 << 20
#: The app ``fedstore demo`` runs.
DIGITS_APP = "fedstore.demos.digits:make_app"
#: Trainers ``simulate`` starts when neither --trainers nor FEDSTORE_TRAINERS says.
DEFAULT_TRAINERS = 2


def _common(g: argparse._ArgumentGroup, *, demo: bool) -> None:
    g.add_argument(
        "--backends",
        default="filesystem",
        help="storage backend chain, comma-separated (default: filesystem, with a shared "
        "root in the temporary work dir; kubo and pinata use their usual settings)",
    )
    g.add_argument(
        "--late-trainer",
        type=int,
        default=3 if demo else 0,
        metavar="N",
        help=f"trainer that starts late (default {3 if demo else 0}; 0: everyone from the start)",
    )
    g.add_argument(
        "--late-round",
        type=int,
        default=5,
        metavar="R",
        help="first round the late trainer takes part in (default 5)",
    )
    name = "demo" if demo else "simulate"
    g.add_argument(
        "--out",
        type=Path,
        default=Path(f"fedstore-{name}-report"),
        help=f"report directory (default ./fedstore-{name}-report)",
    )
    g.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write the final model to FILE (.safetensors, .npz or .fsck)",
    )
    g.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    g.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="FAULT",
        help="inject a fault, repeatable (one of each kind): aggregator-crash@R (SIGKILL of the "
        "process aggregating round R), intruder (a peer outside the manifest sends updates and "
        "CID announcements), poison:N (trainer N sends sign-flipped updates scaled by 10), "
        "lying-aggregator@R (round R's aggregator announces a model that is not the aggregate). "
        "The run becomes a federation with a manifest (written to OUT/federation), nobody starts "
        "late, a clean run is computed in-process for comparison, and the exit status is 0 only "
        "if the federation survived as designed (see docs/FEDERATION.md, Fault demo)",
    )
    g.add_argument(
        "--aggregators",
        type=int,
        default=3,
        metavar="N",
        help="with --fault: aggregator-capable members (default 3; aggregator-crash needs 3)",
    )
    g.add_argument(
        "--netns",
        action="store_true",
        help="with --fault: every process on a host of its own (a Linux network namespace on "
        "a private bridge, 10.204.0.0/24; needs root) with its own filesystem root, objects "
        "exchanged over bitswap",
    )
    g.add_argument("--keep", action="store_true", help="keep the temporary node directories")
    g.add_argument("--plain", action="store_true", help="plain line output instead of a live view")


def _strategy_arguments(g: argparse._ArgumentGroup, default: str | None) -> None:
    g.add_argument(
        "--strategy",
        "--aggregator",
        dest="strategy",
        default=default,
        metavar="STRATEGY",
        help="aggregation strategy: fedavg, median, trimmed-mean, fedadam, or any installed "
        "in the fedstore.strategies entry-point group"
        + (f" (default {default})" if default else " (default: the app's)"),
    )
    g.add_argument(
        "--strategy-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy, repeatable (e.g. trim=0.1 for trimmed-mean)",
    )


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """``fedstore demo``'s options: the digits app, with the demo's defaults."""
    g = p.add_argument_group("federation demo")
    g.add_argument("--rounds", type=int, default=10, help="rounds to train (default 10)")
    g.add_argument("--trainers", type=int, default=3, help="trainer processes (default 3)")
    _strategy_arguments(g, "fedavg")
    g.add_argument(
        "--update-encoding",
        default="float32",
        metavar="NAME",
        help="how trainers encode their updates: float32 (default, lossless), float16, "
        "int8, int8:BLOCK, topk:FRACTION (e.g. topk:0.05; with error feedback)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the data split and model")
    g.add_argument(
        "--round-timeout",
        type=float,
        default=30.0,
        help="seconds a round waits for its quorum (default 30)",
    )
    _common(g, demo=True)
    p.set_defaults(command_name="demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``fedstore simulate``'s options (unset ones: settings, then the app's defaults)."""
    g = p.add_argument_group("simulation")
    g.add_argument(
        "--app",
        metavar="MODULE:OBJ",
        help="the app: a dotted module or path/to/file.py, and the App object in it "
        "(default :app); or FEDSTORE_APP / [federation] app",
    )
    g.add_argument(
        "--app-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for an app factory (OBJ a function returning an App); repeatable",
    )
    g.add_argument("--trainers", type=int, help=f"trainer processes (default {DEFAULT_TRAINERS})")
    g.add_argument("--rounds", type=int, help="rounds to train (default: the app's)")
    g.add_argument(
        "--quorum",
        metavar="N|N,ROUND:M",
        help="updates that close a round (default: every trainer online)",
    )
    _strategy_arguments(g, None)
    g.add_argument(
        "--update-encoding",
        metavar="NAME",
        help="float32, float16, int8, int8:BLOCK, topk:FRACTION (default: the app's)",
    )
    g.add_argument(
        "--round-timeout", type=float, help="seconds a round waits for its quorum (default: app's)"
    )
    _common(g, demo=False)
    p.set_defaults(command_name="simulate")


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buf:
                yield buf.decode("utf-8", "replace")
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
        if len(buf) > MAX_LINE:
            buf = b""


def _worker_argv(args: argparse.Namespace, proc: Proc, tmp: Path, quorum: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "fedstore.demos.federation_worker",
        proc.role,
        "--app",
        args.app_spec,
        *[f"--app-config={k}={v}" for k, v in args.app_config_values.items()],
        "--data-dir",
        str(tmp / proc.name),
        "--fs-root",
        str(tmp / "objects"),
        "--backends",
        args.backends,
        "--trainers",
        str(args.trainers),
        "--log-level",
        "WARNING",
    ]
    if proc.role == "aggregator":
        argv += [
            "--rounds",
            str(args.rounds),
            # only what was asked for: the app's own strategy may be an instance
            *(["--strategy", args.strategy_asked] if args.strategy_asked else []),
            *[f"--strategy-setting={item}" for item in args.strategy_setting],
            "--update-encoding",
            args.update_encoding,
            "--quorum",
            quorum,
            "--min-updates",
            "1",
            "--round-timeout",
            str(args.round_timeout),
        ]
        if args.export is not None:
            argv += ["--export", str(args.export.resolve())]
    else:
        argv += ["--index", str(proc.index), "--idle-timeout", "60", "--go-from-stdin"]
    return argv


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # one BLAS thread per process: four processes share two cores
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _run_proc(
    state: DemoState,
    proc: Proc,
    argv: list[str],
    on_line: Callable[[Proc, dict[str, Any]], None],
) -> None:
    import trio

    assert proc.log_path is not None
    proc.state = "starting"
    log = await trio.to_thread.run_sync(proc.log_path.open, "wb")
    with log:
        async with trio.open_nursery() as nursery:
            p = await nursery.start(
                partial(
                    trio.run_process,
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=_child_env(),
                    check=False,
                )
            )
            proc.process = p
            proc.spawned.set()
            async for line in _lines(p.stdout):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    on_line(proc, ev)
            proc.returncode = await p.wait()
    if proc.returncode != 0 and proc.state != "failed":
        proc.state, proc.detail = "failed", f"exit code {proc.returncode}"
    proc.exited.set()


async def _go(proc: Proc, addr: str) -> None:
    """Let a waiting trainer start its node, bootstrapping from ``addr``."""
    await proc.spawned.wait()
    proc.went = True
    assert proc.process is not None and proc.process.stdin is not None
    await proc.process.stdin.send_all(f"GO {addr}\n".encode())


async def _federate(
    state: DemoState,
    app: App,
    tmp: Path,
    plain: Callable[[str], None],
    refresh: Callable[[], None],
) -> None:
    """Run the processes until the aggregator and every trainer that went online are done.

    Every process starts at once (imports and data loading overlap); trainers
    wait offline, without a node, for ``GO <aggregator address>`` on stdin.
    The late trainer gets it when the round before its first round closes.
    """
    import trio

    from fedstore.demos.federation_state import apply_event

    args = state.args
    n = args.trainers
    late = args.late_trainer if 1 <= args.late_trainer <= n and args.late_round > 1 else 0
    if args.quorum:
        quorum = str(args.quorum)
    else:  # every trainer online
        quorum = f"{n - 1},{args.late_round}:{n}" if late else str(n)
    agg = state.procs["aggregator"]
    trainers = [p for p in state.procs.values() if p is not agg]
    baseline_done = trio.Event()

    async with trio.open_nursery() as nursery:

        def on_line(proc: Proc, ev: dict[str, Any]) -> None:
            apply_event(state, proc, ev, plain)
            if (
                late
                and proc is agg
                and ev.get("event") == "round_closed"
                and int(ev["round"]) == args.late_round - 1
            ):
                plain(f"trainer {late} comes online (takes part from round {args.late_round})")
                nursery.start_soon(_go, state.procs[f"trainer-{late}"], agg.addr)
            refresh()

        async def baseline() -> None:
            from fedstore.errors import AppError

            if state.has_baseline:
                try:
                    state.baseline = await trio.to_thread.run_sync(
                        app.baseline_metrics, args.rounds
                    )
                except AppError as exc:  # the run goes on without a reference
                    state.has_baseline = False
                    plain(f"no baseline: {exc}")
            baseline_done.set()
            refresh()

        for proc in (agg, *trainers):
            argv = _worker_argv(args, proc, tmp, quorum)
            nursery.start_soon(_run_proc, state, proc, argv, on_line)
        with trio.fail_after(120):
            async with trio.open_nursery() as wait:

                async def died() -> None:
                    await agg.exited.wait()
                    raise ConfigError(
                        f"the aggregator exited before it was ready; see {agg.log_path}"
                    )

                wait.start_soon(died)
                await agg.ready.wait()
                wait.cancel_scope.cancel()
        plain(f"aggregator listening on {agg.addr}")
        for p in trainers:
            if p.index != late:
                nursery.start_soon(_go, p, agg.addr)
        nursery.start_soon(baseline)

        async def trainers_gone() -> None:
            # every online trainer exited (crashed?) while the aggregator still runs: stop it
            while True:
                online = [p for p in trainers if p.went]
                for p in online:
                    await p.exited.wait()
                if len([p for p in trainers if p.went]) == len(online):
                    break
            with trio.move_on_after(10):
                await agg.exited.wait()
            if not agg.exited.is_set():
                state.failures.append("every trainer exited before the aggregator finished")
                agg_scope.cancel()

        with trio.CancelScope() as agg_scope:
            nursery.start_soon(trainers_gone)
            await agg.exited.wait()
        # trainers that went online get a short grace period to finish
        with trio.move_on_after(15):
            for p in trainers:
                if p.went:
                    await p.exited.wait()
        with trio.move_on_after(60):
            await baseline_done.wait()
        nursery.cancel_scope.cancel()


def _setting_items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def resolve_simulation(args: argparse.Namespace) -> App:
    """Fill ``args`` with the run's settings and return the app (one-line errors).

    ``simulate``: flags > environment > .env > ``[federation]`` > the app's
    defaults. ``demo``: its flags, for the digits app.
    """
    from fedstore.app import load_app
    from fedstore.app_loader import parse_spec
    from fedstore.demos.federation_worker import parse_settings
    from fedstore.federation.update_encoding import UpdateEncoding

    if args.command_name == "demo":
        args.app_spec = DIGITS_APP
        args.app_config_values = {"seed": str(args.seed)}
        args.quorum = None
        app = load_app(args.app_spec, config=args.app_config_values)
        args.max_seconds = 90.0
    else:
        from fedstore.config import (
            APP,
            APP_CONFIG,
            QUORUM,
            ROUND_TIMEOUT,
            ROUNDS,
            STRATEGY,
            STRATEGY_SETTINGS,
            TRAINERS,
            UPDATE_ENCODING,
            resolve_settings,
        )

        flags: dict[str, str | None] = {
            APP.name: args.app,
            ROUNDS.name: None if args.rounds is None else str(args.rounds),
            TRAINERS.name: None if args.trainers is None else str(args.trainers),
            QUORUM.name: args.quorum,
            STRATEGY.name: args.strategy,
            UPDATE_ENCODING.name: args.update_encoding,
            ROUND_TIMEOUT.name: None if args.round_timeout is None else str(args.round_timeout),
        }
        settings = resolve_settings(flags=flags).values
        spec = APP.text(settings)
        if not spec:
            raise ConfigError(
                "no app: give --app MODULE:OBJ (or set FEDSTORE_APP, or [federation] app)"
            )
        target, obj, is_file = parse_spec(spec)
        args.app_spec = f"{Path(target).resolve()}:{obj}" if is_file else spec
        args.app_config_values = {
            **parse_settings(_setting_items(APP_CONFIG.text(settings)), "app config"),
            **parse_settings(args.app_config, "app config"),
        }
        app = load_app(args.app_spec, config=args.app_config_values)
        args.rounds = ROUNDS.integer(settings) if ROUNDS.is_set(settings) else app.rounds
        args.trainers = (
            TRAINERS.integer(settings) if TRAINERS.is_set(settings) else DEFAULT_TRAINERS
        )
        args.quorum = QUORUM.text(settings) or None
        if not args.strategy_setting:
            args.strategy_setting = _setting_items(STRATEGY_SETTINGS.text(settings))
        args.strategy = STRATEGY.text(settings) or None
        args.update_encoding = UPDATE_ENCODING.text(settings) or app.update_encoding
        args.round_timeout = (
            ROUND_TIMEOUT.number(settings) if ROUND_TIMEOUT.is_set(settings) else app.round_timeout
        )
        args.max_seconds = None
    if not app.can_train:
        raise ConfigError(f"app {app.label} has no train function: App(train=...) or trainer=...")
    if args.rounds < 1 or args.trainers < 1:
        raise ConfigError("--rounds and --trainers must be at least 1")
    if args.fault:  # a fault run starts every member at once
        args.late_trainer = 0
    if args.trainers == 1 and args.late_trainer == 1:
        raise ConfigError("a late trainer needs another trainer for the rounds before it joins")
    if args.late_trainer and args.late_round > args.rounds:
        raise ConfigError(f"--late-round {args.late_round} is after the last round {args.rounds}")
    if args.quorum:
        from fedstore.federation.settings import QuorumSchedule

        try:
            QuorumSchedule.parse(args.quorum)
        except ValueError as exc:
            raise ConfigError(f"--quorum: {exc}") from None
    if args.export is not None and args.export.is_dir():
        raise ConfigError(f"--export {args.export}: it is a directory (give a file name)")
    # fail here, in one line, rather than in the aggregator's process
    strategy = app.load_strategy(args.strategy, parse_settings(args.strategy_setting))
    args.strategy_asked = args.strategy  # None: the workers use the app's strategy
    args.strategy = strategy.name
    args.update_encoding = UpdateEncoding.parse(args.update_encoding).text
    args.targets = dict(app.targets)
    _resolve_faults(args)
    return app


def _resolve_faults(args: argparse.Namespace) -> None:
    """Parse and check ``--fault`` values (one-line ConfigErrors); set ``args.faults``."""
    from fedstore.demos.faults import check_faults, parse_fault

    parsed = [parse_fault(text) for text in args.fault]
    args.faults = check_faults(
        parsed, rounds=args.rounds, trainers=args.trainers, aggregators=args.aggregators
    )
    if not args.faults:
        if args.netns:
            raise ConfigError("--netns goes with --fault")
        return
    if args.backends != "filesystem":
        raise ConfigError("--fault runs use the filesystem backend (leave out --backends)")
    quorum = args.quorum or str(args.trainers)
    if not quorum.isdigit() or not 1 <= int(quorum) <= args.trainers:
        raise ConfigError(
            f"--quorum {quorum}: with --fault the quorum is a number of trainers, 1-{args.trainers}"
        )
    args.fault_quorum = int(quorum)
    args.late_trainer = 0


async def _main(args: argparse.Namespace) -> int:
    import trio
    from rich.live import Live

    from fedstore.console import console as pipe_safe_console
    from fedstore.demos.federation_state import DemoState, Proc
    from fedstore.demos.federation_view import finish, render

    app = resolve_simulation(args)
    command = args.command_name
    console = pipe_safe_console(soft_wrap=True)  # a closed pipe: quiet exit 141, no traceback
    if args.faults:
        from fedstore.demos.fault_demo import run_fault_simulation

        return await run_fault_simulation(args, app, console)
    live_view = console.is_terminal and not args.plain
    tmp = Path(tempfile.mkdtemp(prefix=f"fedstore-{command}-"))
    (tmp / "logs").mkdir()
    procs = {"aggregator": Proc("aggregator", "aggregator", log_path=tmp / "logs/aggregator.log")}
    for i in range(1, args.trainers + 1):
        procs[f"trainer-{i}"] = Proc(
            f"trainer-{i}", "trainer", i, log_path=tmp / f"logs/trainer-{i}.log"
        )
    state = DemoState(
        args, procs, time.monotonic(), command=command, app=app.label,
        has_baseline=app.baseline is not None,
    )  # fmt: skip

    def plain(msg: str) -> None:
        if not live_view:
            console.print(msg, highlight=False, soft_wrap=True)

    console.print(
        f"fedstore {command}: app {app.label}, {args.trainers} trainers + 1 aggregator on "
        f"127.0.0.1, {args.rounds} rounds, {args.strategy}, {args.update_encoding} updates, "
        f"backends {args.backends}, work dir {tmp}",
        highlight=False,
    )
    console.print(
        "membership: open (no manifest: any peer that connects could take part; "
        "'fedstore federation init' makes one, see docs/FEDERATION.md)",
        highlight=False,
    )
    try:
        with trio.fail_after(args.timeout):
            if live_view:
                with Live(render(state), console=console, refresh_per_second=8) as live:

                    def refresh() -> None:
                        live.update(render(state))

                    async def ticker() -> None:
                        while True:
                            await trio.sleep(0.25)
                            refresh()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(ticker)
                        await _federate(state, app, tmp, plain, refresh)
                        nursery.cancel_scope.cancel()
                    refresh()
            else:
                await _federate(state, app, tmp, plain, lambda: None)
        wall = time.monotonic() - state.started
        return finish(state, tmp, wall, console)
    except trio.TooSlowError:
        console.print(
            f"[red]fedstore {command}: gave up after {args.timeout:g} s[/red]; logs in {tmp}"
        )
        args.keep = True
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fedstore simulate`` and ``fedstore demo`` (see the module docstring)."""
    import trio

    return trio.run(_main, args)


#: ``fedstore demo``'s entry point (the same run; its options say it is the digits app)
run_demo = run
