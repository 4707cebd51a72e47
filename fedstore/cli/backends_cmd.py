"""``fedstore backends``, ``fedstore put`` and ``fedstore get``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from fedstore.errors import FedstoreError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backends",
        help="list installed storage backends, where each comes from, and their health",
        description=(
            "List the backends registered in the 'fedstore.backends' entry-point group, "
            "the distribution each comes from, and a health line for each (reachable, "
            "authenticated, version). Backends that lack settings say what is missing."
        ),
    )
    p.add_argument("--no-health", action="store_true", help="do not contact the backends")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser(
        "put",
        help="store a file through the backend chain and print its CID",
        description=(
            "Store PATH on the first backend of the chain that accepts it and print its "
            "CID (the one Kubo's 'ipfs add' gives the same bytes)."
        ),
    )
    p.add_argument("path", metavar="PATH", help="file to store")
    _chain_args(p)
    p.add_argument(
        "--cid-version", type=int, choices=[0, 1], default=0, help="CID version (default 0)"
    )
    p.set_defaults(func=cmd_put)

    p = sub.add_parser(
        "get",
        help="fetch a CID through the backend chain, verified, into a file",
        description=(
            "Fetch CID from the first backend that has it, verify every byte against the "
            "CID, and write it to -o PATH. On failure nothing is left at PATH."
        ),
    )
    p.add_argument("cid", metavar="CID")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="where to write the data")
    _chain_args(p)
    p.set_defaults(func=cmd_get)


def _chain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backend", metavar="NAME", help="use only this backend")
    g.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated chain, e.g. pinata,kubo,filesystem "
        "(default: FEDSTORE_BACKENDS, else what is configured, ending with filesystem)",
    )


def _names(args: argparse.Namespace) -> str | None:
    return args.backend or args.backends or None


def _settings() -> dict[str, str]:
    """Environment merged over ``.env`` and ``fedstore.toml`` (see fedstore.config)."""
    from fedstore.config import load_settings

    return load_settings()


def cmd_backends(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedstore.backends import available_backends, default_backend_names, load_backend
    from fedstore.console import table_console

    installed = available_backends()
    table = Table(title="fedstore backends")
    table.add_column("name")
    table.add_column("provided by")
    table.add_column("health")
    settings = _settings()
    default = default_backend_names(settings)

    async def probe(name: str) -> str:
        try:
            backend = load_backend(name, settings)
        except FedstoreError as exc:
            return f"not usable: {exc}"
        try:
            return (await backend.health()).line()
        finally:
            await backend.aclose()

    for name, info in installed.items():
        health = "(not checked)" if args.no_health else trio.run(probe, name)
        table.add_row(name + (" *" if name in default else ""), info.origin, health)
    table_console().print(table)
    print(f"default chain (*): {','.join(default)}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    from fedstore.backends import build_chain

    path = Path(args.path)
    if not path.is_file():
        print(f"fedstore: error: {path}: no such file", file=sys.stderr)
        return 1

    async def run() -> str:
        async with build_chain(_names(args), _settings()) as chain:
            result = await chain.add(path, cid_version=args.cid_version, name=path.name)
            return result.cid

    print(trio.run(run))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from fedstore.backends import build_chain

    out = Path(args.output)
    if out.is_dir():
        print(f"fedstore: error: {out} is a directory", file=sys.stderr)
        return 1
    if not out.parent.exists():
        print(f"fedstore: error: directory {out.parent} does not exist", file=sys.stderr)
        return 1

    async def run() -> None:
        async with build_chain(_names(args), _settings()) as chain:
            result = await chain.fetch_to_file(args.cid, out)
            print(f"{result.size} bytes from {result.backend}, verified", file=sys.stderr)

    trio.run(run)
    assert os.path.exists(out)
    return 0
