"""Finding an app by name: ``MODULE:OBJ`` or ``path/to/file.py:OBJ``.

:func:`load_app` accepts:

* ``package.module:obj`` - a dotted module importable from ``sys.path``;
  the current directory is searched first (as ``python -m`` does), so a
  module next to where you run ``fedstore`` is found;
* ``path/to/file.py:obj`` - a Python file (relative to the current
  directory, or absolute). Its directory is put at the front of
  ``sys.path`` while it runs, so it can import the modules beside it;
* ``:obj`` may be omitted: it defaults to ``app``; ``obj`` may be dotted
  (``module:apps.small``).

``obj`` is an :class:`~fedstore.app.App`, or a function returning one. A
function is called with ``config`` as keyword arguments (``--app-config
KEY=VALUE`` on the command line): text values are converted to the type of
the parameter's default (``int``, ``float``, ``bool``) or of its annotation.

Every failure is one :class:`~fedstore.errors.AppError` line naming what was
tried: a module that does not exist (and where it was looked for), a module
that fails to import (the missing dependency, or the exception and the line
it was raised at), a missing attribute (with the apps the module does
define), an object of the wrong type, an unknown or mistyped config key.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from fedstore.app import App, _failed
from fedstore.errors import AppError

__all__ = ["DEFAULT_OBJECT", "load_app", "parse_spec"]

#: The attribute looked up when a spec names no object.
DEFAULT_OBJECT = "app"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``spec`` -> ``(module or path, object, is_file)``; AppError when malformed."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise AppError("no app given: expected MODULE:OBJ or path/to/file.py:OBJ")
    target, sep, obj = text.rpartition(":")
    if not sep:
        target, obj = text, DEFAULT_OBJECT
    obj = obj.strip() or DEFAULT_OBJECT
    target = target.strip()
    if not target:
        raise AppError(f"app {spec!r}: no module or file before ':'")
    if not _DOTTED.match(obj):
        raise AppError(f"app {spec!r}: {obj!r} is not a Python name (expected MODULE:OBJ)")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not is_file and not _DOTTED.match(target):
        raise AppError(
            f"app {spec!r}: {target!r} is neither a dotted module name nor a path to a .py file"
        )
    return target, obj, is_file


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise AppError(f"app {spec!r}: file {path} {why}")
    name = f"fedstore_app_{abs(hash(str(path))):x}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise AppError(f"app {spec!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(mspec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        mspec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise _import_error(exc, spec, str(path)) from exc
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(target: str, spec: str, cwd: Path) -> ModuleType:
    here = str(cwd)
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (target == missing or target.startswith(missing + ".")):
            hint = target.rsplit(".", 1)[-1]
            raise AppError(
                f"app {spec!r}: no module named {missing!r} (looked in {cwd} and on sys.path); "
                f"for a file give its path, e.g. path/to/{hint}.py:OBJ"
            ) from None
        raise _import_error(exc, spec, target) from exc
    except (Exception, SystemExit) as exc:
        raise _import_error(exc, spec, target) from exc


def _import_error(exc: BaseException, spec: str, what: str) -> AppError:
    if isinstance(exc, SystemExit):
        return AppError(
            f"app {spec!r}: importing {what} called sys.exit() (a script? keep its "
            "command-line part under if __name__ == '__main__':)"
        )
    if isinstance(exc, AppError):
        return AppError(f"app {spec!r}: {exc}")
    if isinstance(exc, ModuleNotFoundError):
        return AppError(
            f"app {spec!r}: {what} needs the module {exc.name!r}, which is not installed"
        )
    if isinstance(exc, SyntaxError):
        where = f"{Path(exc.filename or what).name}:{exc.lineno}"
        return AppError(f"app {spec!r}: syntax error in {where}: {exc.msg}")
    return _failed(f"app {spec!r}: importing {what}", exc)


def _attribute(module: ModuleType, obj: str, spec: str, where: str) -> object:
    value: object = module
    for part in obj.split("."):
        if not hasattr(value, part):
            apps = sorted(k for k, v in vars(module).items() if isinstance(v, App))
            found = f"; apps it defines: {', '.join(apps)}" if apps else "; it defines no App"
            raise AppError(f"app {spec!r}: {where} has no attribute {obj!r}{found}")
        value = getattr(value, part)
    return value


def _coerce(spec: str, key: str, value: str, param: inspect.Parameter) -> object:
    default = param.default
    kind: object = type(default) if default is not inspect.Parameter.empty else param.annotation
    if isinstance(kind, str):  # postponed annotations
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind.strip(), str)
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise AppError(f"app {spec!r}: config {key} must be {name}, got {value!r:.40}") from None
    return value


def _call_factory(fn: object, spec: str, config: Mapping[str, str]) -> object:
    assert callable(fn)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {
        n: p
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    kwargs: dict[str, object] = {}
    for key, value in config.items():
        if key in accepted:
            kwargs[key] = _coerce(spec, key, value, accepted[key])
        elif open_kwargs:
            kwargs[key] = value
        else:
            known = ", ".join(sorted(accepted)) or "none"
            raise AppError(f"app {spec!r}: no config {key!r}; it accepts: {known}")
    try:
        return fn(**kwargs)
    except Exception as exc:
        raise _failed(f"app {spec!r}: {getattr(fn, '__name__', 'the factory')}()", exc) from exc


def load_app(spec: str, *, config: Mapping[str, str] | None = None, cwd: Path | None = None) -> App:
    """Import and return the App ``spec`` names (see the module docstring).

    ``cwd`` (default: the current directory) is where relative file paths and
    top-level modules are looked for. The App's ``name`` defaults to the
    spec's object path (``module:obj`` or ``file.py:obj``).
    """
    target, obj, is_file = parse_spec(spec)
    base = Path.cwd() if cwd is None else cwd
    if is_file:
        path = Path(target).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        module = _import_file(path, spec)
        where = f"file {path}"
        default_name = f"{path.stem}:{obj}" if path.stem != "app" else f"{path.parent.name}:{obj}"
    else:
        module = _import_module(target, spec, base)
        where = f"module {target!r}"
        default_name = f"{target}:{obj}"
    value = _attribute(module, obj, spec, where)
    if isinstance(value, App):
        if config:
            raise AppError(
                f"app {spec!r} is an App, so it takes no config ({', '.join(config)}); "
                "name a function that returns an App to pass it settings"
            )
        return value.with_name(default_name)
    if callable(value) and not isinstance(value, type):
        made = _call_factory(value, spec, config or {})
        if isinstance(made, App):
            return made.with_name(default_name)
        raise AppError(f"app {spec!r}: {obj}() returned a {type(made).__name__}, not an App")
    raise AppError(
        f"app {spec!r}: {obj} is a {type(value).__name__}, not a fedstore.app.App "
        "(nor a function returning one)"
    )
