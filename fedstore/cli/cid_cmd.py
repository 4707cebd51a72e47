"""``fedstore cid PATH``: print the CID ``ipfs add --only-hash`` would print."""

from __future__ import annotations

import argparse
import os
import sys

from fedstore.ipld.cid import PROFILES, DagParams, cid_of_file

__all__ = ["register", "run"]

#: Files larger than this get a progress bar (when stderr is a terminal).
PROGRESS_THRESHOLD = 64 * 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cid",
        help="print a file's IPFS CID (same as 'ipfs add --only-hash')",
        description=(
            "Compute the CID Kubo's 'ipfs add' gives a file, without a daemon. "
            "Defaults match 'ipfs add' (CIDv0, 256 KiB chunks, 174 links); "
            "--cid-version 1 matches 'ipfs add --cid-version=1' (raw leaves); "
            "--profile unixfs-v1-2025 uses IPIP-499's 1 MiB chunks and 1024 links."
        ),
    )
    p.add_argument("path", metavar="PATH", help="file to hash")
    p.add_argument(
        "--cid-version",
        type=int,
        choices=[0, 1],
        default=None,
        help="CID version (default: 0, or 1 for profile unixfs-v1-2025)",
    )
    p.add_argument(
        "--profile",
        choices=[name for name in PROFILES if name != "unixfs-v0-2015"],
        default="kubo",
        help="DAG layout profile (default: kubo)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the CID of ``args.path`` on stdout; errors go to stderr with exit code 1."""
    params = DagParams.profile(args.profile, args.cid_version)  # ConfigError -> exit 1
    path: str = args.path
    try:
        if not os.path.isfile(path):
            what = "is not a regular file" if os.path.exists(path) else "does not exist"
            print(f"fedstore: error: {path} {what}", file=sys.stderr)
            return 1
        size = os.path.getsize(path)
        if size > PROGRESS_THRESHOLD and sys.stderr.isatty():
            cid = _with_progress(path, params, size)
        else:
            cid = cid_of_file(path, params=params)
    except OSError as exc:
        print(f"fedstore: error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        import json

        doc = {"cid": cid, "path": path, "size": size, "cid_version": params.cid_version}
        print(json.dumps({**doc, "profile": args.profile}))
        return 0
    print(cid)
    return 0


def _with_progress(path: str, params: DagParams, size: int) -> str:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("hashing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("hash", total=size)
        return cid_of_file(
            path, params=params, progress=lambda done: progress.update(task, completed=done)
        )
