"""``fedstore backends``, ``fedstore put`` and ``fedstore get``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.backends.settings import Setting
from fedstore.errors import FedstoreError

if TYPE_CHECKING:
    from fedstore.backends import BackendContext

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backends",
        help="list installed storage backends, their settings, the default chain and health",
        description=(
            "List the backends registered in the 'fedstore.backends' entry-point group, "
            "the distribution each comes from, a health line for each (reachable, "
            "authenticated, version) and the settings each declares with their current "
            "source. Backends that lack settings say what is missing. The default chain "
            "lists the backends that detected their configuration, and why."
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
            "CID, and write it to -o PATH. On failure nothing is left at PATH. With -o - "
            "the data goes to stdout, once all of it is verified (it waits in a temporary "
            "file until then, so nothing unverified is ever written)."
        ),
    )
    p.add_argument("cid", metavar="CID")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="where to write the data ('-' for stdout)",
    )
    _chain_args(p)
    p.set_defaults(func=cmd_get)


def _chain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backend", metavar="NAME", help="use only this backend")
    g.add_argument(
        "--backends",
        metavar="LIST",
        help="comma-separated chain, e.g. pinata,kubo,filesystem "
        "(default: FEDSTORE_BACKENDS, else the backends that detect their configuration; "
        "see 'fedstore backends')",
    )


def _names(args: argparse.Namespace) -> str | None:
    return args.backend or args.backends or None


def _settings() -> dict[str, str]:
    """Environment merged over ``.env`` and ``fedstore.toml`` (see fedstore.config)."""
    from fedstore.config import load_settings

    return load_settings()


def _context(settings: dict[str, str]) -> BackendContext:
    """A one-off command's context: the data directory if one is configured, no host."""
    from fedstore.backends import BackendContext
    from fedstore.config import core_setting

    data_dir = core_setting("FEDSTORE_DIR").text(settings)
    return BackendContext(data_dir=Path(data_dir).expanduser() if data_dir else None)


def cmd_backends(args: argparse.Namespace) -> int:
    import trio
    from rich.markup import escape
    from rich.table import Table

    from fedstore.backends import (
        BACKENDS_SETTING,
        available_backends,
        detect_default_chain,
        load_backend,
        load_backend_class,
        parse_backend_list,
    )
    from fedstore.config import resolve_settings
    from fedstore.console import table_console

    installed = available_backends()
    resolved = resolve_settings()
    settings = resolved.values
    ctx = _context(settings)
    explicit = settings.get(BACKENDS_SETTING, "").strip()
    members = detect_default_chain(settings, ctx)
    default = parse_backend_list(explicit) if explicit else [m.name for m in members]

    async def probe(name: str) -> str:
        try:
            backend = load_backend(name, settings, ctx)
        except FedstoreError as exc:
            return f"not usable: {exc}"
        try:
            return (await backend.health()).line()
        finally:
            await backend.aclose()

    table = Table(title="fedstore backends")
    table.add_column("name")
    table.add_column("provided by")
    table.add_column("health")
    declared: dict[str, tuple[Setting, ...]] = {}
    for name, info in installed.items():
        try:
            declared[name] = load_backend_class(name).settings
        except FedstoreError as exc:
            table.add_row(escape(name), escape(info.origin), escape(f"broken: {exc}"))
            continue
        health = "(not checked)" if args.no_health else trio.run(probe, name)
        mark = " *" if name in default else ""
        table.add_row(escape(name + mark), escape(info.origin), escape(health))
    console = table_console()
    console.print(table)

    for name, owned in declared.items():
        sub = Table(title=f"{name} settings", title_justify="left")
        sub.add_column("setting", no_wrap=True)
        sub.add_column("fedstore.toml")
        sub.add_column("default")
        sub.add_column("now from")
        sub.add_column("meaning")
        for setting in owned:
            origin = str(resolved.origin(setting)) if setting.is_set(settings) else "default"
            secret = " (secret)" if setting.secret else ""
            sub.add_row(
                escape(setting.name),
                escape(f"[{name}] {setting.toml_key(name)}"),
                escape(setting.default or "-"),
                escape(origin),
                escape(setting.help + secret),
            )
        if owned:
            console.print(sub)
        else:
            console.print(f"{name}: no settings")

    if explicit:
        print(f"default chain (*): {','.join(default)} (from {BACKENDS_SETTING})")
    else:
        why = "; ".join(f"{m.name}: {m.reason}" for m in members)
        print(f"default chain (*): {','.join(default)} ({why})")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    import trio

    from fedstore.backends import build_chain

    path = Path(args.path)
    if not path.is_file():
        print(f"fedstore: error: {path}: no such file", file=sys.stderr)
        return 1

    async def run() -> str:
        settings = _settings()
        async with build_chain(_names(args), settings, _context(settings)) as chain:
            result = await chain.add(path, cid_version=args.cid_version, name=path.name)
            return result.cid

    print(trio.run(run))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    import trio

    from fedstore.backends import build_chain

    if args.output == "-":
        return _get_to_stdout(args)
    out = Path(args.output)
    if out.is_dir():
        print(f"fedstore: error: {out} is a directory", file=sys.stderr)
        return 1
    if not out.parent.exists():
        print(f"fedstore: error: directory {out.parent} does not exist", file=sys.stderr)
        return 1

    async def run() -> None:
        settings = _settings()
        async with build_chain(_names(args), settings, _context(settings)) as chain:
            result = await chain.fetch_to_file(args.cid, out)
            print(f"{result.size} bytes from {result.backend}, verified", file=sys.stderr)

    trio.run(run)
    assert os.path.exists(out)
    return 0


def _get_to_stdout(args: argparse.Namespace) -> int:
    """``get CID -o -``: fetch into a private temporary file, verified, then copy to stdout."""
    import shutil
    import tempfile

    import trio

    from fedstore.backends import build_chain

    with tempfile.TemporaryDirectory(prefix="fedstore-get-") as tmp:
        part = Path(tmp) / "data"

        async def run() -> None:
            async with build_chain(_names(args), _settings()) as chain:
                result = await chain.fetch_to_file(args.cid, part)
                print(f"{result.size} bytes from {result.backend}, verified", file=sys.stderr)

        trio.run(run)
        sys.stdout.flush()
        with part.open("rb") as src:
            shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return 0
