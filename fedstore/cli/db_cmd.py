"""``fedstore db upgrade|current|history|schema|rebuild``: the catalog's schema and recovery."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fedstore.cli.checkpoint_cmd import add_dir_argument, data_dir, existing_catalog
from fedstore.errors import CatalogError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "db",
        help="catalog schema: upgrade, current revision, history",
        description=(
            "The catalog schema is versioned with Alembic; the migration scripts ship with "
            "fedstore. Opening an older catalog upgrades it automatically (after a backup) "
            "unless FEDSTORE_CATALOG_AUTO_UPGRADE=0; these commands do it explicitly."
        ),
    )
    cmds = p.add_subparsers(dest="db_command", metavar="SUBCOMMAND")
    cmds.required = True

    up = cmds.add_parser(
        "upgrade",
        help="migrate the catalog to the newest schema (backs it up first)",
        description=(
            "Migrate the catalog in --dir to REVISION (default: head), under a file lock. "
            "An existing catalog is first copied to catalog.sqlite.bak-<rev>-<time>. "
            "A missing catalog is created."
        ),
    )
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.add_argument("--no-backup", action="store_true", help="do not back up the catalog first")
    up.add_argument("--json", action="store_true", help="print a JSON object")
    add_dir_argument(up)
    up.set_defaults(func=cmd_upgrade)

    cur = cmds.add_parser(
        "current",
        help="show the catalog's schema revision and whether it is up to date",
        description="Print the revision stamped in the catalog and the newest one known.",
    )
    add_dir_argument(cur)
    cur.add_argument("--json", action="store_true", help="print a JSON object")
    cur.set_defaults(func=cmd_current)

    hist = cmds.add_parser("history", help="list the schema revisions fedstore ships")
    hist.add_argument("--json", action="store_true", help="one JSON object per revision")
    hist.set_defaults(func=cmd_history)

    schema = cmds.add_parser(
        "schema",
        help="print the catalog schema as normalised SQL",
        description=(
            "Print the schema of the catalog in --dir, or with --fresh the schema a new "
            "catalog gets (this is tests/schema/catalog.sql)."
        ),
    )
    schema.add_argument(
        "--fresh", action="store_true", help="schema of a new catalog migrated to head"
    )
    add_dir_argument(schema)
    schema.set_defaults(func=cmd_schema)

    rebuild = cmds.add_parser(
        "rebuild",
        help="make a new catalog from the checkpoint files (after it was lost or emptied)",
        description=(
            "Record every file in --dir's rounds/ whose bytes match the CID in its name and "
            "form a valid checkpoint, in a new catalog. The old catalog files are moved aside "
            "(catalog.sqlite.lost-<time>), never deleted. Announcements, peers and pins "
            "cannot be recovered. Refuses while a node runs on --dir, and replaces an intact "
            "catalog only with --force."
        ),
    )
    rebuild.add_argument(
        "--force", action="store_true", help="rebuild even though the catalog is intact"
    )
    rebuild.add_argument("--json", action="store_true", help="print the report as JSON")
    add_dir_argument(rebuild)
    rebuild.set_defaults(func=cmd_rebuild)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from fedstore.catalog import migrate, resolve_db_path

    db = resolve_db_path(data_dir(args))
    result = migrate.upgrade(db, args.revision, backup=not args.no_backup)
    if args.json:
        doc = {
            "catalog": str(db),
            "changed": result.changed,
            "from": result.from_revision,
            "to": result.to_revision,
            "backup": None if result.backup is None else str(result.backup),
        }
        print(json.dumps(doc))
        return 0
    if not result.changed:
        print(f"catalog {db} is already at revision {result.to_revision}")
        return 0
    print(f"catalog {db}: {result.from_revision or '(new)'} -> {result.to_revision}")
    if result.backup is not None:
        print(f"backup of the previous catalog: {result.backup}")
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    from fedstore.catalog import migrate

    db = existing_catalog(data_dir(args))
    state = migrate.schema_state(db)
    explain = {
        "current": "up to date",
        "behind": f"out of date: run fedstore db upgrade --dir {db.parent}",
        "ahead": "written by a newer fedstore: upgrade fedstore",
        "fresh": "empty: it gets the schema when first opened",
        "foreign": "not a fedstore catalog",
    }[state.status]
    if args.json:
        doc = {"catalog": str(db), "revision": state.current, "head": state.head}
        print(json.dumps({**doc, "status": state.status, "meaning": explain}))
        return 0
    print(f"catalog:  {db}")
    print(f"revision: {state.current or '(none)'}")
    print(f"head:     {state.head}")
    print(f"status:   {explain}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from alembic.script import ScriptDirectory

    from fedstore.catalog import migrate

    script = ScriptDirectory.from_config(migrate.alembic_config())
    for rev in script.walk_revisions():
        title = rev.doc.splitlines()[0] if rev.doc else ""
        if args.json:
            doc = {"revision": rev.revision, "down_revision": rev.down_revision}
            print(json.dumps({**doc, "head": rev.is_head, "title": title}))
            continue
        head = " (head)" if rev.is_head else ""
        print(f"{rev.revision}{head}  {title}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from fedstore.catalog import migrate

    if args.fresh:
        with tempfile.TemporaryDirectory(prefix="fedstore-schema-") as tmp:
            db = Path(tmp) / "catalog.sqlite"
            migrate.upgrade(db)
            sys.stdout.write(migrate.dump_schema(db))
        return 0
    sys.stdout.write(migrate.dump_schema(existing_catalog(data_dir(args))))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from fedstore.console import clean
    from fedstore.store.rebuild import rebuild_catalog

    directory = data_dir(args)
    if not directory.is_dir():
        raise CatalogError(f"no data directory at {directory}")
    report = rebuild_catalog(directory, force=args.force)
    if args.json:
        import json

        print(
            json.dumps(
                {
                    "catalog": str(report.catalog),
                    "recorded": [{"round": r.round, "cid": r.cid} for r in report.recorded],
                    "skipped": [{"path": rel, "reason": why} for rel, why in report.skipped],
                    "moved": [str(m) for m in report.moved],
                }
            )
        )
        return 1 if report.skipped else 0
    for moved in report.moved:
        print(f"moved aside: {clean(moved)}")
    for rel, why in report.skipped:
        print(f"skipped {clean(rel)}: {clean(why)}", file=sys.stderr)
    rounds = ", ".join(str(r.round) for r in report.recorded) or "none"
    print(
        f"rebuilt catalog {clean(report.catalog)}: {len(report.recorded)} checkpoint(s) "
        f"recorded (rounds {rounds}), {len(report.skipped)} file(s) skipped; announcements, "
        "peers and pins are not recoverable"
    )
    return 1 if report.skipped else 0
