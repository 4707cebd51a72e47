"""``fedstore checkpoint save|load|ls|prune|inspect|verify``: the local checkpoint store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedstore.cli.datadir import add_dir_argument, data_dir
from fedstore.errors import CatalogError, ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from fedstore.catalog import CheckpointRecord
    from fedstore.store import LocalStore, ReconcileReport

__all__ = ["add_dir_argument", "data_dir", "existing_catalog", "register", "round_number"]


def round_number(text: str) -> int:
    """argparse type of ``--round``: ASCII digits, at most the highest round peers accept."""
    from fedstore.rounds import parse_round

    try:
        return parse_round(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def existing_catalog(directory: Path) -> Path:
    """The catalog file in ``directory``; CatalogError if there is none (never creates one)."""
    from fedstore.catalog import resolve_db_path

    db = resolve_db_path(directory)
    if not db.is_file():
        raise CatalogError(
            f"no catalog at {db}: pass --dir with a node's data directory (or set FEDSTORE_DIR)"
        )
    return db


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "checkpoint",
        help="save, load, list, prune and inspect local checkpoints",
        description=(
            "The node's local checkpoints: zstd-compressed safetensors files named by round "
            "and CID, recorded in the SQLite catalog of the data directory. Every load is "
            "verified against the CID."
        ),
    )
    cmds = p.add_subparsers(dest="checkpoint_command", metavar="SUBCOMMAND")
    cmds.required = True

    save = cmds.add_parser(
        "save",
        help="store a weights file (.npz/.safetensors) as a round's checkpoint",
        description="Encode the arrays of FILE as the checkpoint of round N and record it.",
    )
    save.add_argument("--round", type=round_number, required=True, metavar="N", help="round number")
    save.add_argument(
        "--weights", required=True, metavar="FILE", help=".npz or .safetensors weights file"
    )
    save.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata to store with the checkpoint (repeatable)",
    )
    save.add_argument(
        "--cid-version", type=int, choices=[0, 1], default=0, help="CID version (default 0)"
    )
    save.add_argument(
        "--replace",
        action="store_true",
        help="replace a different checkpoint already stored for this round",
    )
    add_dir_argument(save)
    save.add_argument("--json", action="store_true", help="print a JSON object")
    save.set_defaults(func=cmd_save)

    load = cmds.add_parser(
        "load",
        help="write a round's weights (latest by default) to a file",
        description="Verify and decode a checkpoint and write its arrays to FILE.",
    )
    load.add_argument("--round", type=round_number, metavar="N", help="round (default: the latest)")
    load.add_argument(
        "--out", required=True, metavar="FILE", help="output file: .npz, .safetensors or .fsck"
    )
    add_dir_argument(load)
    load.add_argument("--json", action="store_true", help="print a JSON object")
    load.set_defaults(func=cmd_load)

    ls = cmds.add_parser("ls", help="list stored rounds", description="List stored rounds.")
    ls.add_argument("--json", action="store_true", help="one JSON object per round")
    add_dir_argument(ls)
    ls.set_defaults(func=cmd_ls)

    prune = cmds.add_parser(
        "prune",
        help="keep only the N most recent rounds",
        description="Delete every checkpoint except the N highest rounds (rows, then files).",
    )
    prune.add_argument("--keep", type=int, required=True, metavar="N", help="rounds to keep")
    add_dir_argument(prune)
    prune.add_argument("--json", action="store_true", help="print a JSON object")
    prune.set_defaults(func=cmd_prune)

    inspect = cmds.add_parser(
        "inspect",
        help="show a checkpoint's tensors, shapes, dtypes, sizes, CID and metadata",
        description="Verify a checkpoint file against its CID and describe it.",
    )
    inspect.add_argument(
        "--round", type=round_number, metavar="N", help="round (default: the latest)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    add_dir_argument(inspect)
    inspect.set_defaults(func=cmd_inspect)

    verify = cmds.add_parser(
        "verify",
        help="hash every checkpoint file against its CID and reconcile the catalog",
        description=(
            "Remove stale temp files, flag rows whose file is missing or corrupt, report "
            "files the catalog does not know. Exit status 1 if anything is missing or corrupt."
        ),
    )
    add_dir_argument(verify)
    verify.add_argument("--json", action="store_true", help="print a JSON object")
    verify.set_defaults(func=cmd_verify)


def _print_report(report: ReconcileReport) -> None:
    for line in report.lines():
        print(f"fedstore: reconcile: {line}", file=sys.stderr)


def _open_store(
    args: argparse.Namespace, *, create: bool = False, reads_only: bool = False, **kw: object
) -> LocalStore:
    """The store of ``--dir``; *reads_only* commands also work on a read-only directory."""
    from fedstore.store import LocalStore

    directory = data_dir(args)
    if not create:
        existing_catalog(directory)
    read_only = None if reads_only else False
    # reconcile problems are logged
    return LocalStore(directory, read_only=read_only, **kw)  # type: ignore[arg-type]


def _console() -> Console:

    from fedstore.console import table_console

    return table_console()


def _size(n: int | None) -> str:
    """Bytes for humans: ``512 B``, ``7.5 KiB``, ``1.2 MiB``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _parse_meta(items: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta expects KEY=VALUE, got {item!r}")
        meta[key] = value
    return meta


def cmd_save(args: argparse.Namespace) -> int:
    from fedstore.format.weight_files import load_weights_file

    meta = _parse_meta(args.meta)
    try:
        arrays = load_weights_file(args.weights)
    except OSError as exc:
        raise ConfigError(f"cannot read {args.weights}: {exc.strerror or exc}") from exc
    with _open_store(args, create=True, cid_version=args.cid_version) as store:
        rec = store.save(args.round, arrays, meta, replace=args.replace)
        if args.json:
            print(json.dumps({**_record_json(rec), "path": str(store.dir / rec.path)}))
            return 0
        print(
            f"saved round {rec.round}: {rec.cid} ({_size(rec.stored_size)} stored, "
            f"{_size(rec.raw_size)} raw) -> {store.dir / rec.path}"
        )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from fedstore import format as fmt
    from fedstore.format.weight_files import save_weights_file

    out = Path(args.out)
    if out.is_dir():  # checked first: the write would fail naming its temp file instead
        raise ConfigError(f"cannot write {out}: it is a directory (give a file name)")
    with _open_store(args, reads_only=True) as store:
        rec, data = store.read_verified(args.round)
    ckpt = fmt.decode(data)
    metadata = ckpt.metadata if out.suffix.lower() != ".npz" else None
    try:
        save_weights_file(out, ckpt.arrays, metadata=metadata)
    except OSError as exc:  # the atomic write names its temp file: report the user's path
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if args.json:
        doc = {"round": rec.round, "cid": rec.cid, "verified": True, "out": str(out)}
        doc.update({"arrays": len(ckpt.arrays), "parameters": ckpt.parameter_count})
        print(json.dumps(doc))
        return 0
    print(
        f"round {rec.round} ({rec.cid}, verified): {len(ckpt.arrays)} arrays, "
        f"{ckpt.parameter_count:,} parameters -> {out}"
    )
    return 0


def _record_json(r: CheckpointRecord) -> dict[str, object]:
    return {
        "round": r.round,
        "cid": r.cid,
        "cid_version": r.cid_version,
        "status": r.status,
        "codec": r.codec,
        "raw_size": r.raw_size,
        "stored_size": r.stored_size,
        "created_at": r.created_at.isoformat(),
        "created_by": r.created_by,
        "path": r.path,
    }


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _open_store(args, reads_only=True) as store:
        rows = store.list_checkpoints()
        latest = store.latest()
    if args.json:
        for r in rows:
            print(json.dumps(_record_json(r)))
        return 0
    from fedstore.console import cell, clean

    if not rows:
        print(f"no checkpoints in {clean(store.dir)}")
        return 0
    table = Table(title=cell(f"checkpoints in {store.dir}"))
    for col in ("round", "CID", "status", "stored", "raw", "codec", "created (UTC)", "by"):
        table.add_column(col, no_wrap=col in ("CID", "round"))
    for r in rows:
        table.add_row(
            str(r.round),
            cell(r.cid),
            cell(r.status, style="green" if r.status == "ok" else "red"),
            _size(r.stored_size),
            _size(r.raw_size),
            cell(r.codec),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            cell(r.created_by or "-"),
        )
    console = _console()
    console.print(table)
    if latest is not None:
        console.print(cell(f"latest round: {latest.round}  CID: {latest.cid}"))
    else:
        console.print("latest round: none (no checkpoint is intact)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.keep < 1:
        raise ConfigError("--keep must be at least 1")
    with _open_store(args) as store:
        deleted = store.prune(args.keep)
        kept = store.list_rounds()
    if args.json:
        print(json.dumps({"deleted": [r.round for r in deleted], "kept": kept}))
        return 0
    if deleted:
        print(f"deleted rounds {', '.join(str(r.round) for r in deleted)}")
    else:
        print("nothing to prune")
    print(f"kept rounds {', '.join(map(str, kept)) or 'none'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fedstore import format as fmt

    with _open_store(args, reads_only=True) as store:
        rec, data = store.read_verified(args.round)
        path = store.dir / rec.path
    info = fmt.inspect(data)
    if args.json:
        doc = {**info.to_dict(), "round": rec.round, "cid": rec.cid, "path": str(path)}
        print(json.dumps(doc, indent=2))
        return 0
    from rich.text import Text

    from fedstore.console import cell

    # names and metadata come from whoever wrote the checkpoint (a peer): printed as
    # text (cell), never as markup, control characters escaped
    console = _console()
    console.print(Text.assemble((f"round {rec.round}", "bold"), "  ", cell(path)))
    console.print(cell(f"CID            {rec.cid} (v{rec.cid_version}, verified)"))
    console.print(
        cell(
            f"magic/version  {data[:4]!r} v{info.format_version}, codec {info.codec}"
            + (" + byte-shuffle" if info.shuffled else "")
        )
    )
    console.print(
        f"sizes          stored {_size(info.stored_size)}, raw {_size(info.raw_size)}, "
        f"tensors {_size(info.tensor_bytes)} (stored/tensor ratio {info.ratio:.3f})"
    )
    console.print(f"parameters     {info.parameter_count:,} in {len(info.tensors)} tensors")
    for key, value in sorted(info.metadata.items()):
        console.print(cell(f"metadata       {key} = {value}"))
    table = Table()
    for col in ("tensor", "dtype", "shape", "parameters", "bytes"):
        table.add_column(col, justify="right" if col in ("parameters", "bytes") else "left")
    for t in info.tensors:
        table.add_row(
            cell(t.name), cell(t.dtype), str(list(t.shape)), f"{t.size:,}", f"{t.nbytes:,}"
        )
    console.print(table)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _open_store(args, reads_only=True, verify_on_open=None) as store:
        report = store.reconcile("full")
    bad = bool(report.missing or report.corrupt)
    if args.json:
        doc = {
            "checked": report.checked,
            "hashed": report.hashed,
            "missing": report.missing,
            "corrupt": report.corrupt,
            "recovered": report.recovered,
            "orphans": report.orphans,
            "removed_temp_files": report.removed_temp_files,
            "intact": not bad,
        }
        print(json.dumps(doc))
        return 1 if bad else 0
    _print_report(report)
    print(
        f"checked {report.checked} checkpoint(s), hashed {report.hashed}: "
        + ("all intact" if not (report.missing or report.corrupt) else "problems found")
    )
    return 1 if report.missing or report.corrupt else 0
