"""The entry point of ``fedstore simulate --fault`` / ``fedstore demo --fault``.

:func:`run_fault_simulation` plans the federation (:mod:`fedstore.demos.faults`),
optionally on network-namespace hosts (``--netns``), runs it with the live
view (:mod:`fedstore.demos.fault_run`), then the clean run
(:mod:`fedstore.demos.fault_clean`), and writes the report and decides the
exit status (:mod:`fedstore.demos.fault_report`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedstore.demos.fault_run import FaultState, federate_with_faults

__all__ = ["render_faults", "run_fault_simulation"]


def render_faults(state: FaultState) -> Any:
    """The live view: the simulation's rounds and processes, then what the faults did."""
    from rich.console import Group
    from rich.text import Text

    from fedstore.demos.federation_view import render

    faults = ", ".join(f.text for f in state.plan.faults.values())
    lines = [Text(f"faults: {faults}", style="bold")]
    lines += [Text(n) for n in state.notes[-12:]]
    if state.intruder_sent:
        s = state.intruder_sent
        lines.append(
            Text(
                f"intruder: {s['updates']} updates, {s['announcements']} announcements sent",
                style="dim",
            )
        )
    return Group(render(state.demo), *lines)


async def _final_arrays(state: FaultState) -> dict[str, Any]:
    """The final model as a live honest aggregator stored it ({} if none has it)."""
    from fedstore.errors import FedstoreError
    from fedstore.store import AsyncLocalStore

    for name in state.live_honest():
        done = state.demo.procs[name].done or {}
        if state.plan.procs[name].role != "aggregator" or done.get("status") != "complete":
            continue
        try:
            store = await AsyncLocalStore.open(state.plan.procs[name].data_dir)
            try:
                return dict((await store.load(int(done["final_round"]))).arrays)
            finally:
                await store.aclose()
        except FedstoreError:
            continue
    return {}


async def run_fault_simulation(args: argparse.Namespace, app: Any, console: Any) -> int:
    """``simulate``/``demo`` with ``--fault``: plan, run, clean run, report, exit status."""
    import tempfile

    command = args.command_name
    tmp = Path(tempfile.mkdtemp(prefix=f"fedstore-{command}-faults-"))
    (tmp / "logs").mkdir()
    with _hosts(args) as hosts:
        return await _run_faults(args, app, console, tmp, hosts)


@contextmanager
def _hosts(args: argparse.Namespace) -> Iterator[dict[str, tuple[str, tuple[str, ...]]] | None]:
    """With ``--netns``: a bridged LAN, one namespace host per process (removed on exit)."""
    if not args.netns:
        yield None
        return
    from fedstore.errors import ConfigError
    from fedstore.netns import bridged_hosts, ns_argv, unavailable_reason

    why = unavailable_reason()
    if why:
        raise ConfigError(f"--netns: {why}")
    names = [f"agg-{i}" for i in range(1, args.aggregators + 1)]
    names += [f"trainer-{i}" for i in range(1, args.trainers + 1)]
    names += ["intruder"] if "intruder" in args.faults else []
    with bridged_hosts(names, rate=None) as lan:
        yield {n: (lan.addrs[n], tuple(ns_argv(lan.namespaces[n]))) for n in names}


async def _run_faults(
    args: argparse.Namespace,
    app: Any,
    console: Any,
    tmp: Path,
    hosts: dict[str, tuple[str, tuple[str, ...]]] | None,
) -> int:
    import shutil

    import trio
    from rich.live import Live

    from fedstore.demos.fault_clean import clean_run
    from fedstore.demos.fault_report import fault_summary, write_fault_report
    from fedstore.demos.faults import plan_federation
    from fedstore.demos.federation_state import DemoState, Proc

    command = args.command_name
    live_view = console.is_terminal and not args.plain
    strategy = app.load_strategy(args.strategy_asked, _settings(args))
    initial = await trio.to_thread.run_sync(app.initial_arrays)
    plan = plan_federation(
        args.faults,
        work=tmp,
        out=args.out,
        aggregators=args.aggregators,
        trainers=args.trainers,
        rounds=args.rounds,
        round_timeout=args.round_timeout,
        quorum=args.fault_quorum,
        strategy=strategy.name,
        strategy_settings=dict(strategy.settings()),
        update_encoding=args.update_encoding,
        initial=initial,
        name=f"{app.label} fault demo",
        hosts=hosts,
    )
    procs = {
        n: Proc(n, p.role, p.index, peer_id=p.peer_id, log_path=tmp / f"logs/{n}.log")
        for n, p in plan.procs.items()
    }
    demo = DemoState(
        args, procs, time.monotonic(), command=command, app=app.label, has_baseline=False
    )
    state = FaultState(demo, plan)

    def plain(msg: str) -> None:
        if not live_view:
            console.print(msg, highlight=False, soft_wrap=True)

    faults = ", ".join(f.text for f in plan.faults.values())
    console.print(
        f"fedstore {command} with faults ({faults}): app {app.label}, {args.aggregators} "
        f"aggregators + {args.trainers} trainers"
        + (" + 1 intruder" if plan.intruder else "")
        + (" on network-namespace hosts (own disks, bitswap)" if plan.netns else " on 127.0.0.1")
        + f", {args.rounds} rounds, {strategy.name}, round deadline "
        f"{args.round_timeout:g} s, work dir {tmp}",
        highlight=False,
    )
    console.print(
        f"membership: manifest {plan.signed.cid} ({plan.manifest_path}; owner key "
        f"in {plan.owner_dir})",
        highlight=False,
    )
    try:
        with trio.fail_after(args.timeout):
            if live_view:
                with Live(render_faults(state), console=console, refresh_per_second=8) as live:

                    def refresh() -> None:
                        live.update(render_faults(state))

                    async with trio.open_nursery() as nursery:

                        async def ticker() -> None:
                            while True:
                                await trio.sleep(0.25)
                                refresh()

                        nursery.start_soon(ticker)
                        await federate_with_faults(state, tmp, plain, refresh)
                        nursery.cancel_scope.cancel()
                    refresh()
            else:
                await federate_with_faults(state, tmp, plain, lambda: None)
            wall = time.monotonic() - demo.started
            final = await _final_arrays(state)
            console.print("clean run (same federation, no fault, in-process)...", highlight=False)
            clean = await clean_run(plan, app, tmp)
    except trio.TooSlowError:
        console.print(
            f"[red]fedstore {command}: gave up after {args.timeout:g} s[/red]; logs in {tmp}"
        )
        return 1
    doc = fault_summary(state, clean, final, wall)
    paths = write_fault_report(args.out, doc)
    for t in doc["targets"]:
        mark = "[green]met[/green]" if t["ok"] else "[red]MISSED[/red]"
        console.print(f"{mark} {t['target']}: {t['measured']}", soft_wrap=True)
    f, c = doc["final"], doc["clean_run"]
    if f["value"] is not None:
        line = f"final {f['metric']} {f['value']:.4f}"
        if c["value"] is not None:
            line += f", clean run {c['value']:.4f} (gap {doc['gap_to_clean']:+.4f})"
        console.print(f"{line}; {wall:.1f} s", highlight=False)
    console.print(
        f"report: {args.out.resolve()} ({', '.join(p.name for p in paths)})", highlight=False
    )
    if not doc["ok"]:
        args.keep = True
        console.print(
            f"[red]fedstore {command}: the federation did not survive as designed: "
            f"{doc['reason']}[/red] (logs in {tmp})",
            soft_wrap=True,
        )
    elif not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if doc["ok"] else 1


def _settings(args: argparse.Namespace) -> dict[str, str]:
    from fedstore.demos.federation_worker import parse_settings

    return parse_settings(args.strategy_setting)
