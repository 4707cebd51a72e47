"""Reading settings from their sources, with provenance and unknown-name warnings.

Sources, highest precedence first: command-line **flags**, the process
**environment**, a **.env** file, **fedstore.toml**. :func:`resolve` merges
them into one ``NAME -> text`` mapping and records, for every declared
setting, which source set it (for ``fedstore config show``).

Names come from a :class:`SettingsCatalog`: the core's declared settings and
those of every installed backend plugin, loaded only when needed (a name the
core does not know, or a plugin's ``fedstore.toml`` table).

* ``.env``: ``NAME=value`` lines (syntax in :func:`parse_env_file`). A name no
  one declares is reported with the closest known name.
* ``fedstore.toml``: a top-level key is a setting's name, case-insensitive
  (``fedstore_role = "bootstrap"``); the ``[fedstore]`` table holds the core's
  settings without their ``FEDSTORE_`` prefix (``[fedstore] backends = [...]``),
  except those the core keeps in a table of their own (its *sections*:
  ``[federation] rounds = 10`` is ``FEDSTORE_ROUNDS``);
  a table named after an installed backend holds that backend's settings by
  key (``[kubo] api = "..."`` is ``FEDSTORE_KUBO_API``, ``[pinata] jwt`` is
  ``PINATA_JWT``; a sub-table joins with ``_``: ``[pinata.gateway] url`` is
  the key ``gateway_url``). Lists become comma-separated text, booleans
  ``true``/``false``. Unknown keys and tables are reported, one warning line
  each naming the file, the key and the closest known name.
* Aliases (older names such as ``CHECKPOINT_DIR`` for ``FEDSTORE_DIR``): the
  current name wins wherever it is set; an alias is used only when the
  current name is set nowhere (then the highest-precedence alias wins).
  Flags given under an alias count as the current name. The merged mapping
  holds the current name only.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstore.backends.settings import Setting
from fedstore.errors import ConfigError

__all__ = [
    "CORE_TABLE",
    "Origin",
    "ResolvedSettings",
    "SettingsCatalog",
    "parse_env_file",
    "read_toml",
    "resolve",
]

#: The ``fedstore.toml`` table of the core's own settings.
CORE_TABLE = "fedstore"
#: Deepest table nesting accepted in fedstore.toml (``[a.b.c]``).
_MAX_DEPTH = 4

PluginLoader = Callable[[], tuple[list[str], Callable[[str], Sequence[Setting]]]]


class SettingsCatalog:
    """Every declared setting: the core's, and each installed plugin's (loaded on demand).

    *plugins* gives the installed plugin names (cheap, no import) and a
    function returning one plugin's declarations (imports it). A plugin that
    fails to load contributes no settings and is reported once in
    :attr:`problems`.
    """

    def __init__(
        self,
        core: Sequence[Setting],
        plugins: PluginLoader | None = None,
        *,
        sections: Mapping[str, Sequence[Setting]] | None = None,
    ) -> None:
        self.core = tuple(core)
        #: core settings kept in their own fedstore.toml table, by table name
        self.sections = {name: tuple(s) for name, s in (sections or {}).items()}
        self._loader = plugins
        self._names: list[str] | None = None
        self._get: Callable[[str], Sequence[Setting]] | None = None
        self._plugins: dict[str, tuple[Setting, ...]] = {}
        self.problems: dict[str, str] = {}
        self._core_index = _index(self.core)

    # -- plugins ---------------------------------------------------------------------
    def plugin_names(self) -> list[str]:
        if self._names is None:
            if self._loader is None:
                self._names, self._get = [], None
            else:
                self._names, self._get = self._loader()
        return list(self._names)

    def plugin(self, name: str) -> tuple[Setting, ...]:
        """The declarations of plugin *name* ("" if it is not installed or failed to load)."""
        if name not in self._plugins:
            settings: tuple[Setting, ...] = ()
            if name in self.plugin_names() and self._get is not None:
                try:
                    settings = tuple(self._get(name))
                except Exception as exc:  # a broken third-party plugin
                    self.problems[name] = str(exc)
            self._plugins[name] = settings
        return self._plugins[name]

    def plugins(self) -> dict[str, tuple[Setting, ...]]:
        """Every installed plugin's declarations, by plugin name (imports them all)."""
        return {name: self.plugin(name) for name in self.plugin_names()}

    # -- lookups ---------------------------------------------------------------------
    def lookup(self, name: str, *, load: bool = True) -> Setting | None:
        """The setting declared under *name* or as its alias; the core's first.

        With *load* false only the core and plugins loaded so far are searched.
        """
        found = self._core_index.get(name)
        if found is not None:
            return found
        pools = self.plugins().values() if load else self._plugins.values()
        for settings in pools:
            found = _index(settings).get(name)
            if found is not None:
                return found
        return None

    def known_names(self) -> list[str]:
        names: list[str] = []
        for setting in self.everything():
            names += [setting.name, *setting.aliases]
        return names

    def everything(self) -> list[Setting]:
        """Core settings then each plugin's, each name once (shared declarations listed once)."""
        seen: set[str] = set()
        out: list[Setting] = []
        for setting in [*self.core, *(s for p in self.plugins().values() for s in p)]:
            if setting.name not in seen:
                seen.add(setting.name)
                out.append(setting)
        return out

    def owners(self, name: str) -> list[str]:
        """Who declares *name*: ``["core"]`` or plugin names."""
        if name in self._core_index:
            return ["core"]
        return [p for p, settings in self.plugins().items() if name in _index(settings)]

    def aliases(self) -> dict[str, str]:
        """Alias -> current name, for the core's settings."""
        return {alias: s.name for s in self.core for alias in s.aliases}


def _index(settings: Iterable[Setting]) -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for s in settings:
        out.setdefault(s.name, s)
        for alias in s.aliases:
            out.setdefault(alias, s)
    return out


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The most similar of *candidates* (case-insensitive), or None if there are none."""
    pool = list(dict.fromkeys(candidates))
    if not pool:
        return None
    lowered = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.0)
    return lowered[match[0]] if match else None


# -- .env -----------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}


def _unquote(value: str, *, where: str) -> str:
    if value[:1] == '"':
        out: list[str] = []
        i = 1
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value):
                out.append(_ESCAPES.get(value[i + 1], "\\" + value[i + 1]))
                i += 2
                continue
            if ch == '"':
                rest = value[i + 1 :].strip()
                if rest and not rest.startswith("#"):
                    raise ConfigError(f"{where}: text after closing quote")
                return "".join(out)
            out.append(ch)
            i += 1
        raise ConfigError(f"{where}: unterminated double quote")
    if value[:1] == "'":
        end = value.find("'", 1)
        if end < 0:
            raise ConfigError(f"{where}: unterminated single quote")
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(f"{where}: text after closing quote")
        return value[1:end]
    for marker in (" #", "\t#"):
        cut = value.find(marker)
        if cut >= 0:
            value = value[:cut]
    return value.strip()


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file.

    Lines are ``NAME=value`` or ``export NAME=value``; ``#`` starts a comment
    line, or an inline comment after whitespace in an unquoted value; values
    may be single- or double-quoted (double quotes understand ``\\n``,
    ``\\t``, ``\\"`` and ``\\\\``). A malformed line is a
    :class:`~fedstore.errors.ConfigError` naming the file and line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"env file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror or exc}") from exc
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        where = f"{path}:{lineno}"
        if (
            not sep
            or not name.isascii()
            or not name.replace("_", "a").isalnum()
            or name[0].isdigit()
        ):
            raise ConfigError(f"{where}: expected NAME=value")
        out[name] = _unquote(value.strip(), where=where)
    return out


# -- fedstore.toml --------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Load ``fedstore.toml`` as a document (ConfigError for unreadable or invalid files)."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a fedstore.toml") from None


def _text(value: Any, *, path: Path, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in value
    ):
        return ",".join(str(v) for v in value)
    raise ConfigError(f"{path}: {where} has a value of unsupported type")


def _flatten_table(
    table: Mapping[str, Any], path: Path, where: str, depth: int = 1
) -> dict[str, Any]:
    """``{"gateway": {"url": x}}`` -> ``{"gateway_url": x}`` (keys lower-cased)."""
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{path}: [{where}] nests more than {_MAX_DEPTH} tables deep")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, inner in _flatten_table(value, path, f"{where}.{key}", depth + 1).items():
                out[f"{key.lower()}_{sub}"] = inner
        else:
            out[key.lower()] = value
    return out


def toml_settings(
    doc: Mapping[str, Any], path: Path, catalog: SettingsCatalog
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Resolve a ``fedstore.toml`` document to ``(values, where, warnings)``.

    *where* maps each setting name to its spelling in the file (``[kubo] api``).
    Unknown keys keep today's flattening (``[x] y`` -> ``X_Y``) so nothing is
    silently lost, and each is reported.
    """
    values: dict[str, str] = {}
    where: dict[str, str] = {}
    warnings: list[str] = []
    plugins = catalog.plugin_names()
    for key, value in doc.items():
        if not isinstance(value, dict):
            name = key.upper()
            if catalog.lookup(name) is None:
                hint = closest(name, catalog.known_names())
                warnings.append(_unknown(path, f"key {key!r}", hint))
            values[name] = _text(value, path=path, where=key)
            where[name] = key
            continue
        table = key.lower()
        flat = _flatten_table(value, path, key)
        sectioned = {s.name for settings in catalog.sections.values() for s in settings}
        if table == CORE_TABLE:
            declared: Sequence[Setting] = [s for s in catalog.core if s.name not in sectioned]
        elif table in catalog.sections:
            declared = catalog.sections[table]
        elif table in plugins:
            declared = catalog.plugin(table)
        else:
            hint = closest(table, [CORE_TABLE, *catalog.sections, *plugins])
            warnings.append(_unknown(path, f"section [{key}]", f"[{hint}]" if hint else None))
            for sub, inner in flat.items():
                values[f"{key}_{sub}".upper()] = _text(inner, path=path, where=f"[{key}] {sub}")
            continue
        by_key = {s.toml_key(table): s for s in declared}
        by_name = {n.lower(): s for s in declared for n in (s.name, *s.aliases)}
        for sub, inner in flat.items():
            setting = by_key.get(sub) or by_name.get(sub)
            spelled = f"[{key}] {sub}"
            text = _text(inner, path=path, where=spelled)
            if setting is None:
                hint = closest(sub, [*by_key, *by_name])
                warnings.append(_unknown(path, f"key {sub!r} in [{key}]", hint))
                values[f"{key}_{sub}".upper()] = text
                continue
            name = setting.name if sub in by_key else sub.upper()  # an alias stays one
            values[name] = text
            where[name] = spelled
    return values, where, warnings


def _unknown(path: Path, what: str, hint: str | None) -> str:
    near = f"; closest known: {hint}" if hint else ""
    return f"{path}: unknown {what}{near}"


# -- merging --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting's value came from: *source* (flag, environment, .env,
    fedstore.toml, default) and *detail* (the file, or the spelling used)."""

    source: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source} ({self.detail})" if self.detail else self.source


@dataclass
class ResolvedSettings:
    """The merged settings (:attr:`values`), where each came from, and what was reported."""

    values: dict[str, str]
    origins: dict[str, Origin] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    catalog: SettingsCatalog | None = None

    def origin(self, setting: Setting) -> Origin:
        return self.origins.get(setting.name) or Origin("default")


@dataclass
class _Layer:
    source: str
    detail: str
    values: dict[str, str]
    spelled: dict[str, str] = field(default_factory=dict)


def resolve(
    catalog: SettingsCatalog,
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str | None] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    toml_file: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
) -> ResolvedSettings:
    """Merge flags > *environ* > ``.env`` > ``fedstore.toml`` (see the module docstring).

    *env_file*/*toml_file* (or ``FEDSTORE_ENV_FILE``/``FEDSTORE_CONFIG``)
    name files that must exist; otherwise ``.env`` and ``fedstore.toml`` in
    *cwd* (default: the current directory) are read if present. *flags*
    values of None mean "not given".
    """
    env = dict(os.environ if environ is None else environ)
    base = Path.cwd() if cwd is None else cwd
    aliases = catalog.aliases()
    given = {aliases.get(k, k): v for k, v in (flags or {}).items() if v is not None}
    warnings: list[str] = []

    toml_path_text = str(
        toml_file or given.get("FEDSTORE_CONFIG") or env.get("FEDSTORE_CONFIG") or ""
    )
    toml_path = Path(toml_path_text) if toml_path_text else base / "fedstore.toml"
    toml_layer = _Layer("fedstore.toml", str(toml_path), {})
    if toml_path_text or toml_path.is_file():
        values, spelled, found = toml_settings(read_toml(toml_path), toml_path, catalog)
        toml_layer.values, toml_layer.spelled = values, spelled
        warnings += found

    env_path_text = str(
        env_file
        or given.get("FEDSTORE_ENV_FILE")
        or env.get("FEDSTORE_ENV_FILE")
        or toml_layer.values.get("FEDSTORE_ENV_FILE")
        or ""
    )
    env_path = Path(env_path_text) if env_path_text else base / ".env"
    dotenv = _Layer(".env", str(env_path), {})
    if env_path_text or env_path.is_file():
        dotenv.values = parse_env_file(env_path)
        for name in dotenv.values:
            if catalog.lookup(name) is None:
                hint = closest(name, catalog.known_names())
                warnings.append(_unknown(env_path, f"setting {name!r}", hint))

    flag_layer = _Layer("flag", "", given)
    if env_file:
        flag_layer.values.setdefault("FEDSTORE_ENV_FILE", str(env_file))
    if toml_file:
        flag_layer.values.setdefault("FEDSTORE_CONFIG", str(toml_file))
    layers = [flag_layer, _Layer("environment", "", env), dotenv, toml_layer]

    merged: dict[str, str] = {}
    origins: dict[str, Origin] = {}
    for layer in reversed(layers):
        merged.update(layer.values)
        for name in layer.values:
            origins[name] = Origin(layer.source, _detail(layer, name))
    for alias in aliases:
        merged.pop(alias, None)
        origins.pop(alias, None)
    for setting in catalog.core:
        if not setting.aliases:
            continue
        chosen = _choose(layers, setting)
        merged.pop(setting.name, None)
        origins.pop(setting.name, None)
        if chosen is not None:
            layer, spelling = chosen
            merged[setting.name] = layer.values[spelling]
            detail = _detail(layer, spelling)
            if spelling != setting.name and layer.source != "flag":
                detail = f"{detail}, as {spelling}" if detail else f"as {spelling}"
            origins[setting.name] = Origin(layer.source, detail)
    return ResolvedSettings(merged, origins, warnings, catalog)


def _detail(layer: _Layer, name: str) -> str:
    if layer.source == "fedstore.toml" and name in layer.spelled:
        return f"{layer.detail}: {layer.spelled[name]}"
    return layer.detail


def _choose(layers: Sequence[_Layer], setting: Setting) -> tuple[_Layer, str] | None:
    """The highest layer setting the current name, else the highest setting an alias.

    An empty value counts as unset, as everywhere else.
    """
    for layer in layers:
        if layer.values.get(setting.name, "").strip():
            return layer, setting.name
    for layer in layers:
        for alias in setting.aliases:
            if layer.values.get(alias, "").strip():
                return layer, alias
    return None
