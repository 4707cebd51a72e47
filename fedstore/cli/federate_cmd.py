"""``fedstore aggregate``, ``fedstore train`` and ``fedstore simulate``: run an app.

An app (:class:`fedstore.app.App`) is named ``MODULE:OBJ`` or
``path/to/file.py:OBJ`` (``--app``, ``FEDSTORE_APP`` or ``[federation] app``):

* ``fedstore aggregate --app X`` runs the federation's aggregator: it prints
  the multiaddr trainers bootstrap from, runs ``--rounds`` rounds and records
  every round (participants, the trainers' and the app's metrics) in its
  catalog; ``--export FILE`` writes the final model as a weights file;
* ``fedstore train --app X --bootstrap ADDR`` runs one trainer
  (``--trainer-index I --trainers N`` tell an app that splits data which
  part is this one's);
* ``fedstore simulate --app X --trainers N`` runs both on loopback as
  processes with a live view and a report (:mod:`fedstore.demos.federation`;
  ``fedstore demo`` is the same for the built-in digits app).

Settings: flags > environment > ``.env`` > ``fedstore.toml`` (federation
settings in its ``[federation]`` table, node settings as for ``fedstore
node``) > the app's defaults. Progress: Rich on a terminal, one line per
event otherwise, JSON lines with ``--log-json`` (:mod:`fedstore.cli.federate_progress`).
Both run as services too: SIGTERM or SIGHUP stops the role cleanly (a
``stopped`` event, the catalog closed with the run's end recorded, exit
status 0), and the same command on the same data directory resumes from the
catalog: the aggregator at the round after the last one it recorded, a
trainer from the last global model it holds.
Exit status 0 when the federation completed or was stopped by a signal, 1
when it failed or on an error (one line on stderr), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstore.errors import ConfigError

if TYPE_CHECKING:
    from fedstore.app import App
    from fedstore.cli.federate_progress import Progress
    from fedstore.config import NodeConfig

__all__ = ["announce_flags", "register"]

#: The error when no app is named anywhere.
NO_APP = "no app: give --app MODULE:OBJ (or set FEDSTORE_APP, or [federation] app)"
#: Module of the simulation (loopback processes, live view, report).
SIMULATION = "fedstore.demos.federation"
#: Signals that stop ``aggregate`` / ``train`` cleanly (Ctrl-C stays 130).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agg = sub.add_parser(
        "aggregate",
        help="run an app's aggregator: prints the address trainers join, runs the rounds",
        description=(
            "Run the federation's aggregator for an app (MODULE:OBJ or path/to/file.py:OBJ): "
            "its initial weights, evaluation, strategy and defaults; flags and the "
            "[federation] table of fedstore.toml override them. Prints the multiaddr to "
            "share with trainers, records every round in the catalog, exits 0 when every "
            "round completed."
        ),
    )
    _app_arguments(agg)
    g = agg.add_argument_group("rounds (default: the app's)")
    g.add_argument("--rounds", type=int, help="rounds to run")
    g.add_argument("--quorum", metavar="N|N,ROUND:M", help="updates that close a round")
    g.add_argument("--min-updates", type=int, help="fewest updates a timed-out round closes with")
    g.add_argument("--round-timeout", type=float, metavar="SECONDS", help="wait per round")
    g.add_argument("--strategy", metavar="NAME", help="aggregation strategy by name")
    g.add_argument(
        "--strategy-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy, repeatable (e.g. trim=0.1)",
    )
    g.add_argument("--update-encoding", metavar="NAME", help="float32, float16, int8, topk:F")
    g.add_argument(
        "--export", type=Path, metavar="FILE", help="write the final model (.safetensors|.npz)"
    )
    _node_arguments(agg, "bootstrap")
    agg.set_defaults(func=run_aggregate)

    tr = sub.add_parser(
        "train",
        help="run one trainer of an app, joining an aggregator's federation",
        description=(
            "Run a trainer for an app (MODULE:OBJ or path/to/file.py:OBJ): it connects to "
            "the aggregator (--bootstrap, the address 'fedstore aggregate' prints), trains "
            "each round on the global model it fetched by CID, and sends its update. Exits "
            "0 when the aggregator announces the federation complete."
        ),
    )
    _app_arguments(tr)
    g = tr.add_argument_group("trainer")
    g.add_argument(
        "--trainer-index",
        type=int,
        metavar="I",
        help="which trainer this is, 1..N (for apps that split a data set; default 1)",
    )
    g.add_argument("--trainers", type=int, metavar="N", help="how many trainers (default 1)")
    g.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="give up after this long without a message from the aggregator (default 60)",
    )
    _node_arguments(tr, "trainer")
    tr.set_defaults(func=run_train)

    sim = sub.add_parser(
        "simulate",
        help="run an app's aggregator and N trainers as processes on loopback, with a report",
        description=(
            "Simulate a federation on this machine: an aggregator and --trainers trainers "
            "run the app as separate processes on 127.0.0.1, each with its own data "
            "directory, with a live view and a report directory at the end."
        ),
    )
    simulation: Any = importlib.import_module(SIMULATION)
    simulation.add_arguments(sim)
    sim.set_defaults(func=simulation.run)


def _app_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--app",
        metavar="MODULE:OBJ",
        help="the app: a dotted module or path/to/file.py, and the App in it (default :app)",
    )
    p.add_argument(
        "--app-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for an app factory (OBJ a function returning an App); repeatable",
    )


def _node_arguments(p: argparse.ArgumentParser, role: str) -> None:
    g = p.add_argument_group("node")
    g.add_argument(
        "--dir", metavar="DIR", help="data directory (default FEDSTORE_DIR, else ./fedstore-data)"
    )
    g.add_argument("--listen", metavar="MULTIADDR", help="listen address (default 127.0.0.1)")
    g.add_argument(
        "--announce",
        metavar="MULTIADDR",
        help="address to advertise instead of the bound one, /ip4/IP[/tcp/PORT]",
    )
    g.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="peer to connect to at start (repeatable)"
        + ("; the aggregator's address" if role == "trainer" else ""),
    )
    g.add_argument("--backends", metavar="LIST", help="backend chain, e.g. filesystem,bitswap")
    g.add_argument("--env-file", metavar="FILE", help=".env file to read")
    g.add_argument("--config", metavar="FILE", help="fedstore.toml to read")
    out = p.add_argument_group("output")
    out.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    out.add_argument(
        "--log-json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="progress as JSON lines on stdout (and logs as JSON on stderr)",
    )


def announce_flags(text: str | None) -> dict[str, str | None]:
    """The node settings an ``--announce /ip4/IP[/tcp/PORT]`` stands for.

    Today's node advertises one IP instead of the bound one
    (``FEDSTORE_IS_CLOUD`` + ``FEDSTORE_IP``), keeping the bound port; a
    port in the multiaddr must therefore be the one listened on (checked by
    :func:`_check_announce_port`). Anything else is a ConfigError.
    """
    if not text:
        return {}
    parts = [p for p in text.strip().split("/") if p]
    if (
        len(parts) not in (2, 4)
        or parts[0] not in ("ip4", "ip6")
        or (len(parts) == 4 and (parts[2] != "tcp" or not parts[3].isdigit()))
    ):
        raise ConfigError(f"--announce {text!r}: expected /ip4/IP or /ip4/IP/tcp/PORT")
    import ipaddress

    try:
        ipaddress.ip_address(parts[1])
    except ValueError:
        raise ConfigError(f"--announce {text!r}: {parts[1]!r} is not an IP address") from None
    return {"FEDSTORE_IS_CLOUD": "true", "FEDSTORE_IP": parts[1]}


def _check_announce_port(text: str | None, listen: tuple[str, ...]) -> None:
    if not text:
        return
    parts = [p for p in text.strip().split("/") if p]
    if len(parts) != 4:
        return
    ports = {p.split("/tcp/")[1].split("/")[0] for p in listen if "/tcp/" in p}
    if ports != {parts[3]}:
        raise ConfigError(
            f"--announce {text}: port {parts[3]} is not the port listened on "
            f"({', '.join(sorted(ports)) or 'none'}); give --listen /ip4/0.0.0.0/tcp/{parts[3]}"
        )


def _configure(args: argparse.Namespace, role: str) -> tuple[NodeConfig, dict[str, str]]:
    """The node's config and the merged settings, from flags > env > .env > fedstore.toml."""
    from fedstore.config import APP, load_node_config

    flags: dict[str, str | None] = {
        "FEDSTORE_ROLE": role,
        "FEDSTORE_DIR": args.dir,
        "FEDSTORE_LISTEN": args.listen,
        "FEDSTORE_BOOTSTRAP": ",".join(args.bootstrap) if args.bootstrap else None,
        "FEDSTORE_BACKENDS": args.backends,
        APP.name: args.app,
        **announce_flags(args.announce),
        **_role_flags(args),
    }
    cfg = load_node_config(flags, env_file=args.env_file, toml_file=args.config)
    _check_announce_port(args.announce, cfg.listen)
    return cfg, dict(cfg.settings)


def _role_flags(args: argparse.Namespace) -> dict[str, str | None]:
    from fedstore.config import (
        IDLE_TIMEOUT,
        MIN_UPDATES,
        QUORUM,
        ROUND_TIMEOUT,
        ROUNDS,
        STRATEGY,
        STRATEGY_SETTINGS,
        TRAINER_INDEX,
        TRAINERS,
        UPDATE_ENCODING,
    )

    def text(value: object) -> str | None:
        return None if value is None else str(value)

    values = {
        ROUNDS.name: getattr(args, "rounds", None),
        QUORUM.name: getattr(args, "quorum", None),
        MIN_UPDATES.name: getattr(args, "min_updates", None),
        ROUND_TIMEOUT.name: getattr(args, "round_timeout", None),
        STRATEGY.name: getattr(args, "strategy", None),
        STRATEGY_SETTINGS.name: ",".join(getattr(args, "strategy_setting", []) or []) or None,
        UPDATE_ENCODING.name: getattr(args, "update_encoding", None),
        TRAINER_INDEX.name: getattr(args, "trainer_index", None),
        TRAINERS.name: getattr(args, "trainers", None),
        IDLE_TIMEOUT.name: getattr(args, "idle_timeout", None),
    }
    return {name: text(v) for name, v in values.items()}


def _load(settings: dict[str, str], flags: list[str]) -> tuple[App, str]:
    """The app, with its config from FEDSTORE_APP_CONFIG and then each --app-config."""
    from fedstore.app import load_app
    from fedstore.config import APP, APP_CONFIG
    from fedstore.demos.federation_worker import parse_settings

    spec = APP.text(settings)
    if not spec:
        raise ConfigError(NO_APP)
    items = [i.strip() for i in APP_CONFIG.text(settings).split(",") if i.strip()]
    config = {**parse_settings(items, "app config"), **parse_settings(flags, "--app-config")}
    return load_app(spec, config=config), spec


def _progress(args: argparse.Namespace, role: str) -> Progress:
    from fedstore.cli.federate_progress import Progress

    return Progress.choose(json_lines=bool(getattr(args, "log_json", False)), plain=args.plain,
                           role=role)  # fmt: skip


def _ready(role: str, addr: str) -> dict[str, Any]:
    return {"event": "ready", "role": role, "peer_id": addr.rsplit("/", 1)[-1], "addr": addr}


def _done(progress: Progress, role: str, result: Any, head: tuple[int, str] | None) -> int:
    ev: dict[str, Any] = {
        "event": "done",
        "role": role,
        "status": result.status,
        "final_round": result.final_round,
        "final_cid": result.final_cid,
        "local_head": list(head) if head else None,
        "reason": result.reason,
    }
    if hasattr(result, "rejections"):
        ev["rejections"] = dict(result.rejections)
    if hasattr(result, "rounds_trained"):
        ev["rounds_trained"] = list(result.rounds_trained)
    if progress.mode == "json":
        progress.emit(ev)
    elif result.status == "complete":
        progress.say(
            f"federation complete: round {result.final_round}, final model {result.final_cid}",
            style="bold green",
        )
    if result.status != "complete":
        print(
            f"fedstore: error: federation {result.status} at round {result.final_round}: "
            f"{result.reason or 'no reason given'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _stopped(progress: Progress, role: str, head: tuple[int, str] | None) -> int:
    """A signal stopped the role: say what the catalog holds and how to resume; exit 0."""
    progress.emit({"event": "stopped", "role": role, "local_head": list(head) if head else None})
    held = f"round {head[0]} ({head[1]})" if head else "no round yet"
    progress.say(f"stopped; the catalog holds {held}: run the same command to resume")
    return 0


def _run(main: Any) -> Any:
    """Run *main* (an async callable) under trio until it ends or a stop signal arrives."""
    import trio

    from fedstore.cli.node_service import stopped, until_stopped

    try:
        return trio.run(until_stopped, main, STOP_SIGNALS)
    finally:
        stopped(STOP_SIGNALS)


# -- aggregate ----------------------------------------------------------------------------


def run_aggregate(args: argparse.Namespace) -> int:
    from fedstore.cli.node_service import exit_cleanly_on
    from fedstore.config import (
        MIN_UPDATES,
        QUORUM,
        ROUND_TIMEOUT,
        ROUNDS,
        STRATEGY,
        STRATEGY_SETTINGS,
        UPDATE_ENCODING,
    )
    from fedstore.demos.federation_worker import parse_settings
    from fedstore.federation import api
    from fedstore.federation.final_model import export_model, local_head
    from fedstore.federation.update_encoding import UpdateEncoding

    exit_cleanly_on(STOP_SIGNALS)
    cfg, settings = _configure(args, "bootstrap")
    app, spec = _load(settings, args.app_config)
    items = [i.strip() for i in STRATEGY_SETTINGS.text(settings).split(",") if i.strip()]
    strategy = app.load_strategy(STRATEGY.text(settings) or None, parse_settings(items))
    rounds = ROUNDS.integer(settings) if ROUNDS.is_set(settings) else app.rounds
    quorum = QUORUM.text(settings) or app.quorum
    if isinstance(quorum, str):  # a bad one fails here, before the node starts
        from fedstore.federation.settings import QuorumSchedule

        try:
            QuorumSchedule.parse(quorum)
        except ValueError as exc:
            raise ConfigError(f"--quorum: {exc}") from None
    encoding = UpdateEncoding.parse(UPDATE_ENCODING.text(settings) or app.update_encoding)
    if args.export is not None and args.export.is_dir():
        raise ConfigError(f"--export {args.export}: it is a directory (give a file name)")
    progress = _progress(args, "aggregator")
    progress.say(
        f"fedstore aggregate: app {app.label}, strategy {strategy.name}, {rounds} rounds, "
        f"quorum {quorum}, {encoding.text} updates, data dir {cfg.data_dir}"
    )

    def ready(addr: str) -> None:
        progress.emit(_ready("aggregator", addr))
        split = " --trainer-index I --trainers N" if app.trainer is not None else ""
        join = f"fedstore train --app {spec} --bootstrap {addr}{split}"
        progress.say(f"trainers join with:\n  {join}")

    with progress:
        result = _run(
            functools.partial(
                api.aggregate_app,
                app,
                rounds=rounds,
                quorum=quorum,
                min_updates=MIN_UPDATES.integer(settings) if MIN_UPDATES.is_set(settings) else None,
                round_timeout=(
                    ROUND_TIMEOUT.number(settings) if ROUND_TIMEOUT.is_set(settings) else None
                ),
                strategy=strategy,
                update_encoding=encoding.text,
                node=cfg,
                on_event=progress.event,
                on_ready=ready,
            )
        )
    if result is None:
        return _stopped(progress, "aggregator", local_head(cfg.data_dir))
    if result.status == "complete" and args.export is not None:
        params = export_model(cfg.data_dir, result.final_round, result.final_cid, args.export)
        progress.emit({"event": "exported", "path": str(args.export), "parameters": params})
    return _done(progress, "aggregator", result, local_head(cfg.data_dir))


# -- train --------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    from fedstore.app import TrainerContext
    from fedstore.cli.node_service import exit_cleanly_on
    from fedstore.config import IDLE_TIMEOUT, TRAINER_INDEX, TRAINERS
    from fedstore.federation import api
    from fedstore.federation.final_model import local_head

    exit_cleanly_on(STOP_SIGNALS)
    cfg, settings = _configure(args, "trainer")
    if not cfg.bootstrap:
        raise ConfigError(
            "a trainer needs the aggregator's address: --bootstrap MULTIADDR "
            "(the line 'fedstore aggregate' prints)"
        )
    app, _spec = _load(settings, args.app_config)
    if not app.can_train:
        raise ConfigError(f"app {app.label} has no train function: App(train=...) or trainer=...")
    count = TRAINERS.integer(settings) if TRAINERS.is_set(settings) else 1
    context = TrainerContext(TRAINER_INDEX.integer(settings), count, cfg.data_dir)
    progress = _progress(args, "trainer")
    progress.say(
        f"fedstore train: app {app.label}, trainer {context.index} of {context.count}, "
        f"data dir {cfg.data_dir}, aggregator {', '.join(cfg.bootstrap)}"
    )
    with progress:
        result = _run(
            functools.partial(
                api.train_app,
                app,
                context=context,
                node=cfg,
                idle_timeout=IDLE_TIMEOUT.number(settings),
                connect_timeout=max(cfg.connect_timeout, 30.0),
                on_event=progress.event,
                on_ready=lambda addr: progress.emit(_ready("trainer", addr)),
            )
        )
    if result is None:
        return _stopped(progress, "trainer", local_head(cfg.data_dir))
    return _done(progress, "trainer", result, local_head(cfg.data_dir))
