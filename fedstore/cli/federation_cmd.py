"""``fedstore federation init|add|remove|show|verify``: signed federation manifests.

A manifest (:mod:`fedstore.federation.manifest`) lists a federation's
members with their roles and the rules every member applies; it is signed
with the owner's Ed25519 identity key (``--key DIR`` names a data directory
whose ``identity.key`` signs: a node's, or one kept for the owner alone) and
addressed by the CID of its bytes. ``add`` and ``remove`` write a new
version naming the previous one's CID. Members are given by peer id
(``--member 12D3KooW...=trainer``) or by a node's data directory
(``--member-dir DIR=aggregator,trainer``, which creates the node's identity
if it has none yet). ``show`` and ``verify`` take a manifest file or a CID
recorded in a node's catalog (``--dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedstore.errors import ManifestError

__all__ = ["register"]

DEFAULT_ROLES = ("aggregator", "trainer")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "federation",
        help="create, change, show and verify signed federation manifests",
        description=(
            "Signed federation manifests: who belongs to a federation (peer ids and roles), "
            "its strategy and round rules. Nodes run with --federation FILE|CID take part "
            "as members and drop everyone else's messages."
        ),
    )
    fsub = p.add_subparsers(dest="federation_command", metavar="SUBCOMMAND")
    fsub.required = True

    init = fsub.add_parser("init", help="create and sign a new manifest")
    init.add_argument("--name", required=True, help="the federation's name")
    _key(init)
    _members(init)
    init.add_argument("--strategy", default="fedavg", help="aggregation strategy (default fedavg)")
    init.add_argument(
        "--strategy-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy (repeatable)",
    )
    init.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    init.add_argument(
        "--round-timeout", type=float, default=30.0, help="seconds per round (default 30)"
    )
    init.add_argument(
        "--quorum", type=int, default=1, help="fewest member updates per round (default 1)"
    )
    init.add_argument(
        "--aggregation",
        choices=["rotate", "leaderless"],
        default="rotate",
        help="rotate: duty rotates with failover (default); leaderless: majority of results",
    )
    init.add_argument(
        "--update-encoding",
        default="float32",
        metavar="ENCODING",
        help="how trainers encode updates: float32 (default), float16, int8, int8:BLOCK, "
        "topk:FRACTION",
    )
    init.add_argument(
        "--initial",
        metavar="WEIGHTS",
        help="pin the starting weights (a checkpoint or weights file) every member checks",
    )
    init.add_argument("--out", required=True, type=Path, help="manifest file to write")
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=run_init)

    add = fsub.add_parser("add", help="write a new version with members added (or re-roled)")
    add.add_argument("manifest", type=Path, help="the current manifest file")
    _key(add)
    _members(add)
    add.add_argument("--out", type=Path, help="write here (default: replace the file)")
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.set_defaults(func=run_add)

    rm = fsub.add_parser("remove", help="write a new version without some members")
    rm.add_argument("manifest", type=Path, help="the current manifest file")
    _key(rm)
    rm.add_argument(
        "--member", action="append", default=[], required=True, metavar="PEER", help="peer id"
    )
    rm.add_argument("--out", type=Path, help="write here (default: replace the file)")
    rm.add_argument("--json", action="store_true", help="print the result as JSON")
    rm.set_defaults(func=run_remove)

    show = fsub.add_parser("show", help="print a manifest")
    show.add_argument("manifest", metavar="FILE|CID")
    show.add_argument("--dir", metavar="DIR", help="node data directory to look CIDs up in")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.set_defaults(func=run_show)

    verify = fsub.add_parser("verify", help="check a manifest's form and signature")
    verify.add_argument("manifest", metavar="FILE|CID")
    verify.add_argument(
        "--previous", metavar="FILE|CID", help="also check it is the next version of this one"
    )
    verify.add_argument("--dir", metavar="DIR", help="node data directory to look CIDs up in")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.set_defaults(func=run_verify)


def _key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        required=True,
        metavar="DIR",
        help="directory whose identity.key signs (created if missing); must be the owner's",
    )


def _members(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="PEER[=ROLES]",
        help="a member by peer id; ROLES: aggregator,trainer (default both); repeatable",
    )
    p.add_argument(
        "--member-dir",
        action="append",
        default=[],
        metavar="DIR[=ROLES]",
        help="a member by node data directory (its identity); repeatable",
    )


# -- helpers ---------------------------------------------------------------------------------


def _roles(text: str, where: str) -> frozenset[str]:
    from fedstore.federation.manifest import ROLES

    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    bad = sorted(roles - set(ROLES))
    if not roles or bad:
        raise ManifestError(f"{where}: roles must be among {', '.join(ROLES)}, got {text!r:.60}")
    return roles


def _parse_members(args: argparse.Namespace) -> list[Any]:
    from fedstore.federation.manifest import Member
    from fedstore.federation.signing import is_ed25519_peer_id, load_signer

    out: list[Member] = []
    for item in args.member:
        peer, sep, roles = item.partition("=")
        if not is_ed25519_peer_id(peer.strip()):
            raise ManifestError(f"--member {item!r:.60}: not an Ed25519 peer id (12D3KooW...)")
        out.append(Member(peer.strip(), _roles(roles, item) if sep else frozenset(DEFAULT_ROLES)))
    for item in args.member_dir:
        path, sep, roles = item.rpartition("=") if "=" in item else (item, "", "")
        signer = load_signer(Path(path))
        out.append(Member(signer.peer_id, _roles(roles, item) if sep else frozenset(DEFAULT_ROLES)))
    return out


def _signer(args: argparse.Namespace) -> Any:
    from fedstore.federation.signing import load_signer

    return load_signer(Path(args.key))


def _load(source: str, data_dir: str | None) -> Any:
    """A manifest from a file, or by CID from a node's catalog."""
    from fedstore.federation.manifest import load_manifest_file, parse_signed
    from fedstore.federation.membership import manifest_source

    kind, value = manifest_source(source)
    if kind == "file":
        return load_manifest_file(value)
    from fedstore.catalog import Catalog
    from fedstore.ipld import same_cid
    from fedstore.store.paths import resolve_data_dir

    directory = resolve_data_dir(data_dir)
    if not directory.is_dir():
        raise ManifestError(
            f"manifest {value}: no file of that name and no node directory {directory}"
        )
    with Catalog.open(directory) as cat:
        rec = cat.get_manifest(value)
    if rec is None:
        raise ManifestError(f"manifest {value} is not recorded in {directory}'s catalog")
    signed = parse_signed(rec.document.encode("ascii"))
    if not same_cid(signed.cid, value):
        raise ManifestError(f"the catalog's manifest {value} is stored as {signed.cid}")
    return signed


def _summary(signed: Any) -> dict[str, Any]:
    m = signed.manifest
    return {"cid": signed.cid, "manifest": m.doc()}


def _write(args: argparse.Namespace, signed: Any, target: Path, what: str) -> int:
    from fedstore.federation.manifest import write_manifest_file

    write_manifest_file(target, signed)
    m = signed.manifest
    if args.json:
        print(json.dumps({**_summary(signed), "file": str(target)}, sort_keys=True))
    else:
        print(f"{what} manifest {signed.cid} -> {target}")
        print(f"  {len(m.members)} member(s), previous version: {m.previous or 'none'}")
    return 0


# -- commands ---------------------------------------------------------------------------------


def run_init(args: argparse.Namespace) -> int:
    from fedstore.demos.federation_worker import parse_settings
    from fedstore.federation.manifest import Manifest, initial_cid, sign_manifest
    from fedstore.federation.strategies import load_strategy
    from fedstore.federation.update_encoding import UpdateEncoding

    signer = _signer(args)
    members = _parse_members(args)
    if not members:
        raise ManifestError("a federation needs members: --member PEER or --member-dir DIR")
    strategy = load_strategy(args.strategy, parse_settings(args.strategy_setting))
    pin = None
    if args.initial:
        from fedstore.format.weight_files import load_weights_file

        pin = initial_cid(load_weights_file(Path(args.initial)))
    by_peer = {m.peer: m for m in members}
    manifest = Manifest(
        name=args.name,
        owner=signer.peer_id,
        members=tuple(sorted(by_peer.values(), key=lambda m: m.peer)),
        strategy=strategy.name,
        strategy_settings=dict(strategy.settings()),
        rounds=args.rounds,
        round_timeout=args.round_timeout,
        quorum=args.quorum,
        aggregation=args.aggregation,
        initial=pin,
        update_encoding=UpdateEncoding.parse(args.update_encoding).text,
    )
    return _write(args, sign_manifest(manifest, signer), args.out, "created")


def run_add(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedstore.federation.manifest import load_manifest_file, sign_manifest

    current = load_manifest_file(args.manifest)
    members = _parse_members(args)
    if not members:
        raise ManifestError("nothing to add: --member PEER or --member-dir DIR")
    new = replace(current.manifest.with_members(members), previous=current.cid)
    return _write(args, sign_manifest(new, _signer(args)), args.out or args.manifest, "new")


def run_remove(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedstore.federation.manifest import load_manifest_file, sign_manifest

    current = load_manifest_file(args.manifest)
    new = replace(current.manifest.without([p.strip() for p in args.member]), previous=current.cid)
    return _write(args, sign_manifest(new, _signer(args)), args.out or args.manifest, "new")


def run_show(args: argparse.Namespace) -> int:
    signed = _load(args.manifest, args.dir)
    m = signed.manifest
    if args.json:
        print(json.dumps(_summary(signed), sort_keys=True))
        return 0
    settings = ", ".join(f"{k}={v}" for k, v in sorted(m.strategy_settings.items()))
    lines = [
        f"federation  {m.name}",
        f"cid         {signed.cid}",
        f"owner       {m.owner}",
        f"previous    {m.previous or '-'}",
        f"strategy    {m.strategy}" + (f" ({settings})" if settings else ""),
        f"rounds      {m.rounds} (timeout {m.round_timeout:g} s, quorum {m.quorum} members)",
        f"aggregation {m.aggregation}",
        f"updates     {m.update_encoding}",
        f"initial     {m.initial or '- (not pinned)'}",
        f"members     {len(m.members)}",
    ]
    lines += [f"  {x.peer}  {','.join(sorted(x.roles))}" for x in m.members]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from fedstore.federation.manifest import check_successor

    try:
        signed = _load(args.manifest, args.dir)
        if args.previous:
            check_successor(_load(args.previous, args.dir), signed)
    except ManifestError as exc:
        if args.json:
            print(json.dumps({"valid": False, "error": str(exc)}, sort_keys=True))
            return 1
        raise
    if args.json:
        print(json.dumps({"valid": True, "cid": signed.cid}, sort_keys=True))
    else:
        m = signed.manifest
        extra = f", next version of {args.previous}" if args.previous else ""
        print(f"valid: {signed.cid} signed by its owner {m.owner}{extra}")
    return 0
