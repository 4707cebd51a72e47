"""``fedstore demo``: the federation demo (default) and ``fedstore demo weights``.

The federation demo is ``fedstore simulate`` of the built-in digits app
(:mod:`fedstore.demos.digits`) with the demo's own defaults: 3 trainers,
10 rounds, trainer 3 joining at round 5.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["register"]

#: sub-demo name -> module under fedstore.demos exposing add_arguments(parser) and run(args)->int
SUBDEMOS = {
    "weights": "fedstore.demos.weights",
}
#: the demo run when no sub-demo is named: exposes add_demo_arguments(parser) and run_demo(args)
DEFAULT_DEMO = "fedstore.demos.federation"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a demonstration (default: the federated-learning demo on loopback)",
        description=(
            "Without a sub-demo: an aggregator and trainers as separate processes on "
            "loopback train the built-in digits app together, storing every round by CID "
            "(the same as 'fedstore simulate --app fedstore.demos.digits:app'). "
            "'fedstore demo weights' walks through the local persistence layer."
        ),
    )
    default: Any = importlib.import_module(DEFAULT_DEMO)
    default.add_demo_arguments(p)
    p.set_defaults(func=default.run_demo)
    demos = p.add_subparsers(dest="demo", metavar="DEMO")
    for name, modname in SUBDEMOS.items():
        mod: Any = importlib.import_module(modname)
        sp = demos.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
