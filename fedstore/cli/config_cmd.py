"""``fedstore config show`` and ``fedstore config example``.

Both come from declarations: the core's settings (:data:`fedstore.config.CORE_SETTINGS`)
and each installed backend's ``settings`` class attribute, so a third-party
backend's settings appear as soon as its distribution is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedstore.backends.settings import Setting
from fedstore.errors import ConfigError

__all__ = ["env_example_text", "register"]

#: What ``show`` prints instead of a secret's value.
REDACTED = "***"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="show every effective setting and where it comes from; write .env.example",
        description=(
            "Settings come from flags, the environment, a .env file and fedstore.toml, in "
            "that order of precedence; the core and every installed backend declare theirs."
        ),
    )
    sub2 = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    sub2.required = True

    show = sub2.add_parser(
        "show",
        help="every setting: effective value, source (flag, environment, .env, "
        "fedstore.toml, default) and owner; secrets redacted",
        description=(
            "List every setting the core and the installed backends declare, with its "
            "effective value and where it comes from. Secret values print as ***. Unknown "
            "names in .env and fedstore.toml are reported on stderr."
        ),
    )
    show.add_argument("--json", action="store_true", help="one JSON array on stdout")
    show.add_argument("--env-file", metavar="FILE", help=".env file to read")
    show.add_argument("--config", metavar="FILE", help="fedstore.toml to read")
    show.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a value as a command-line flag would give it (repeatable)",
    )
    show.set_defaults(func=cmd_show)

    example = sub2.add_parser(
        "example",
        help="print (or write) a .env template listing every setting with its default",
        description=(
            "Generate the .env template from the declarations. The repository's "
            ".env.example is 'fedstore config example --builtin -o .env.example'."
        ),
    )
    example.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    example.add_argument(
        "--builtin",
        action="store_true",
        help="only the backends shipped with fedstore (as the repository's .env.example)",
    )
    example.set_defaults(func=cmd_example)


# -- show -----------------------------------------------------------------------------


def _flags(pairs: Sequence[str]) -> dict[str, str | None]:
    flags: dict[str, str | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        flags[name.strip().upper()] = value
    return flags


def show_rows(
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
    env_file: str | None = None,
    toml_file: str | None = None,
    cwd: Path | None = None,
) -> list[dict[str, object]]:
    """One row per declared setting: name, value (secrets redacted), source, owner, ..."""
    from fedstore.config import resolve_settings

    resolved = resolve_settings(
        environ, flags=flags, env_file=env_file, toml_file=toml_file, cwd=cwd
    )
    catalog = resolved.catalog
    assert catalog is not None
    for name, problem in catalog.problems.items():
        print(f"fedstore: warning: backend {name}: {problem}", file=sys.stderr)
    rows: list[dict[str, object]] = []
    for setting in catalog.everything():
        raw = setting.raw(resolved.values)
        origin = resolved.origin(setting) if raw else None
        value = raw or setting.default
        if setting.secret and value:
            value = REDACTED
        rows.append(
            {
                "name": setting.name,
                "value": value,
                "source": origin.source if origin else "default",
                "detail": origin.detail if origin else "",
                "owner": ",".join(catalog.owners(setting.name)),
                "default": setting.default,
                "secret": setting.secret,
                "aliases": list(setting.aliases),
                "help": setting.help,
            }
        )
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    rows = show_rows(flags=_flags(args.set), env_file=args.env_file, toml_file=args.config)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.markup import escape
    from rich.table import Table

    from fedstore.console import table_console

    table = Table(title="fedstore settings")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source")
    table.add_column("owner")
    for row in rows:
        detail = f" ({row['detail']})" if row["detail"] else ""
        table.add_row(
            escape(str(row["name"])),
            escape(str(row["value"])) if row["value"] != "" else "[dim](unset)[/dim]",
            escape(f"{row['source']}{detail}"),
            escape(str(row["owner"])),
        )
    table_console().print(table)
    return 0


# -- example --------------------------------------------------------------------------

_HEADER = """\
# fedstore settings. Copy to .env (read from the current directory) and edit.
# Precedence: command-line flags > environment > .env > fedstore.toml.
# Every setting is listed; commented-out lines show the default (empty = unset).
# Generated from the declarations of the core and the installed backends by
#   fedstore config example --builtin -o .env.example
# 'fedstore config show' prints the effective values and where each comes from.
# Status lines, commands and the Python API are described in docs/NODE.md.
"""


def _entry(lines: list[str], setting: Setting, table: str) -> None:
    secret = " (secret: keep this file private)" if setting.secret else ""
    lines.append(f"# {setting.help}{secret}")
    where = f"# fedstore.toml: [{table}] {setting.toml_key(table)}"
    if setting.aliases:
        where += f"; older name: {', '.join(setting.aliases)}"
    lines.append(where)
    lines.append(f"# {setting.name}={setting.default}")
    lines.append("")


def env_example_text(*, builtin_only: bool = False) -> str:
    """The ``.env`` template: the core's settings, then each installed backend's.

    A setting two backends share (the HTTP retry settings) is listed under
    the first and referred to under the others. *builtin_only* keeps the
    backends of the ``fedstore`` distribution only.
    """
    from fedstore.backends.registry import available_backends, load_backend_class
    from fedstore.config import CORE_GROUPS, core_table

    lines = [_HEADER]
    for title, group in CORE_GROUPS:
        lines.append(f"# --- {title} ---")
        for setting in group:
            _entry(lines, setting, core_table(setting))
    listed: dict[str, str] = {}
    for name, info in available_backends().items():
        if builtin_only and info.distribution != "fedstore":
            continue
        declared = load_backend_class(name).settings
        lines.append(f"# --- backend: {name} ({info.target}) ---")
        if not declared:
            lines.append("# (no settings)")
            lines.append("")
        shared = [s.name for s in declared if s.name in listed]
        if shared:
            owners = sorted({listed[n] for n in shared})
            lines.append(f"# also reads {', '.join(shared)} (listed under {', '.join(owners)})")
            lines.append("")
        for setting in declared:
            if setting.name not in listed:
                listed[setting.name] = name
                _entry(lines, setting, name)
    return "\n".join(lines).rstrip("\n") + "\n"


def cmd_example(args: argparse.Namespace) -> int:
    text = env_example_text(builtin_only=args.builtin)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
