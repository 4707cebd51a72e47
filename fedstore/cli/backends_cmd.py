"""``fedstore backends``, ``fedstore put`` and ``fedstore get``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.backends.settings import Setting
from fedstore.errors import FedstoreError

if TYPE_CHECKING:
    from fedstore.backends import BackendContext
    from fedstore.backends.chain import ChainAddResult, FetchResult
    from fedstore.errors import Attempt

#: Files smaller than this are stored without a progress line.
_PROGRESS_MIN = 16 * 1024 * 1024

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
    p.add_argument("--json", action="store_true", help="print a JSON object")
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
    p.add_argument("--json", action="store_true", help="print a JSON object (CID, copies)")
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
    p.add_argument("--json", action="store_true", help="print a JSON object (size, backend)")
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

    declared: dict[str, tuple[Setting, ...]] = {}
    rows: list[dict[str, object]] = []
    for name, info in installed.items():
        row: dict[str, object] = {"name": name, "origin": info.origin, "default": name in default}
        try:
            declared[name] = load_backend_class(name).settings
        except FedstoreError as exc:
            rows.append({**row, "health": f"broken: {exc}", "settings": []})
            continue
        health = None if args.no_health else trio.run(probe, name)
        row["health"] = health
        row["settings"] = [
            {
                "name": setting.name,
                "toml": f"[{name}] {setting.toml_key(name)}",
                "default": setting.default,
                "source": str(resolved.origin(setting)) if setting.is_set(settings) else "default",
                "secret": setting.secret,
                "help": setting.help,
            }
            for setting in declared[name]
        ]
        rows.append(row)
    why = BACKENDS_SETTING if explicit else "; ".join(f"{m.name}: {m.reason}" for m in members)
    if args.json:
        print(json.dumps({"backends": rows, "default_chain": default, "why": why}, indent=2))
        return 0

    table = Table(title="fedstore backends")
    table.add_column("name")
    table.add_column("provided by")
    table.add_column("health")
    for row in rows:
        mark = " *" if row["default"] else ""
        health = "(not checked)" if row["health"] is None else str(row["health"])
        table.add_row(escape(f"{row['name']}{mark}"), escape(str(row["origin"])), escape(health))
    console = table_console()
    console.print(table)

    for row in rows:
        owned = row["settings"]
        assert isinstance(owned, list)
        if str(row["name"]) not in declared:
            continue
        sub = Table(title=f"{row['name']} settings", title_justify="left")
        sub.add_column("setting", no_wrap=True)
        sub.add_column("fedstore.toml")
        sub.add_column("default")
        sub.add_column("now from")
        sub.add_column("meaning")
        for item in owned:
            secret = " (secret)" if item["secret"] else ""
            sub.add_row(
                escape(item["name"]),
                escape(item["toml"]),
                escape(item["default"] or "-"),
                escape(item["source"]),
                escape(item["help"] + secret),
            )
        if owned:
            console.print(sub)
        else:
            console.print(f"{row['name']}: no settings")

    if explicit:
        print(f"default chain (*): {','.join(default)} (from {BACKENDS_SETTING})")
    else:
        print(f"default chain (*): {','.join(default)} ({why})")
    return 0


class _StoreProgress:
    """A chain write observer that names the backend being written on the progress line."""

    def __init__(self, describe: Callable[[str], None]) -> None:
        self._describe = describe

    async def attempt_started(self, cid: str, backend: str) -> None:
        self._describe(f"storing on {backend}")

    async def attempt_finished(self, cid: str, attempt: Attempt) -> None:
        self._describe("stored" if attempt.ok else f"{attempt.backend} failed")


def cmd_put(args: argparse.Namespace) -> int:
    import functools

    import trio

    from fedstore.backends import build_chain
    from fedstore.cli.progress import byte_progress, on_terminal
    from fedstore.console import console
    from fedstore.ipld.cid import cid_of_file

    path = Path(args.path)
    if not path.is_file():
        print(f"fedstore: error: {path}: no such file", file=sys.stderr)
        return 1
    size = path.stat().st_size

    async def run() -> ChainAddResult:
        settings = _settings()
        async with build_chain(_names(args), settings, _context(settings)) as chain:
            with byte_progress(f"hashing {path.name}", size) as hashed:
                hash_file = functools.partial(cid_of_file, path, args.cid_version, progress=hashed)
                cid = await trio.to_thread.run_sync(hash_file)
            if on_terminal() and size >= _PROGRESS_MIN:
                err = console(stderr=True)
                with err.status(f"storing {path.name} ({size:,} bytes)") as status:
                    notes = _StoreProgress(lambda text: status.update(f"{text}: {path.name}"))
                    return await chain.add(
                        path, cid_version=args.cid_version, name=path.name, expected_cid=cid,
                        observer=notes,
                    )  # fmt: skip
            return await chain.add(
                path, cid_version=args.cid_version, name=path.name, expected_cid=cid
            )

    result = trio.run(run)
    if args.json:
        doc = {"cid": result.cid, "size": result.size, "stored_on": result.stored_on}
        doc["copies"] = result.copies
        doc["attempts"] = [
            {"backend": a.backend, "ok": a.ok, "error": None if a.ok else a.describe()}
            for a in result.attempts
        ]
        print(json.dumps(doc))
        return 0
    print(result.cid)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    import trio

    from fedstore.backends import build_chain
    from fedstore.cli.progress import byte_progress

    if args.output == "-":
        if args.json:
            print(
                "fedstore: error: --json prints to stdout; it cannot go with -o -", file=sys.stderr
            )
            return 2
        return _get_to_stdout(args)
    out = Path(args.output)
    if out.is_dir():
        print(f"fedstore: error: {out} is a directory", file=sys.stderr)
        return 1
    if not out.parent.exists():
        print(f"fedstore: error: directory {out.parent} does not exist", file=sys.stderr)
        return 1

    async def run() -> FetchResult:
        settings = _settings()
        async with build_chain(_names(args), settings, _context(settings)) as chain:
            with byte_progress(f"fetching {args.cid[:12]}…") as fetched:
                return await chain.fetch_to_file(args.cid, out, progress=fetched)

    result = trio.run(run)
    assert os.path.exists(out)
    if args.json:
        doc = {"cid": result.cid, "size": result.size, "backend": result.backend}
        print(json.dumps({**doc, "path": str(out), "verified": True}))
    else:
        print(f"{result.size} bytes from {result.backend}, verified", file=sys.stderr)
    return 0


def _get_to_stdout(args: argparse.Namespace) -> int:
    """``get CID -o -``: fetch into a private temporary file, verified, then copy to stdout."""
    import shutil
    import tempfile

    import trio

    from fedstore.backends import build_chain
    from fedstore.cli.progress import byte_progress

    with tempfile.TemporaryDirectory(prefix="fedstore-get-") as tmp:
        part = Path(tmp) / "data"

        async def run() -> None:
            async with build_chain(_names(args), _settings()) as chain:
                with byte_progress(f"fetching {args.cid[:12]}…") as fetched:
                    result = await chain.fetch_to_file(args.cid, part, progress=fetched)
                print(f"{result.size} bytes from {result.backend}, verified", file=sys.stderr)

        trio.run(run)
        sys.stdout.flush()
        with part.open("rb") as src:
            shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    return 0
