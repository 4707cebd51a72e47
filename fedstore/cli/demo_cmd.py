"""``fedstore demo``: the federation demo (default) and ``fedstore demo weights``."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["register"]

#: sub-demo name -> module under fedstore.demos exposing add_arguments(parser) and run(args)->int
SUBDEMOS = {
    "weights": "fedstore.demos.weights",
}
#: the demo run when no sub-demo is named
DEFAULT_DEMO = "fedstore.demos.federation"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a demonstration (default: the federated-learning demo on loopback)",
        description=(
            "Without a sub-demo: an aggregator and trainers as separate processes on "
            "loopback train a model together, storing every round by CID. "
            "'fedstore demo weights' walks through the local persistence layer."
        ),
    )
    default: Any = importlib.import_module(DEFAULT_DEMO)
    default.add_arguments(p)
    p.set_defaults(func=default.run)
    demos = p.add_subparsers(dest="demo", metavar="DEMO")
    for name, modname in SUBDEMOS.items():
        mod: Any = importlib.import_module(modname)
        sp = demos.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
