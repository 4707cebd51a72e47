"""Find storage backends by name through the ``fedstore.backends`` entry-point group.

Backends are plugins: any installed distribution can register one with::

    [project.entry-points."fedstore.backends"]
    mybackend = "my_package:MyBackend"

where ``MyBackend`` subclasses :class:`fedstore.backends.StorageBackend`. The
core never imports a plugin by module name and knows no plugin's name or
settings: it asks stevedore for the entry point named in the user's
configuration, builds it with ``MyBackend.create(settings, ctx)`` after
checking the values of ``MyBackend.settings``, and, when the user names no
chain, asks every installed backend's ``detect`` whether and where it joins
(:func:`default_backend_names`). Errors are fedstore's own: an unknown name
lists the installed names, and a plugin that fails to import names the
plugin and the cause.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from stevedore import driver
from stevedore.exception import MultipleMatches, NoMatches

from fedstore.backends.base import BackendContext, StorageBackend
from fedstore.backends.settings import Setting
from fedstore.errors import BackendLoadError

__all__ = [
    "BACKENDS_SETTING",
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "ChainMember",
    "available_backends",
    "backend_settings",
    "build_backends",
    "default_backend_names",
    "detect_default_chain",
    "installed_classes",
    "load_backend",
    "load_backend_class",
    "parse_backend_list",
    "validate_backend_settings",
]

ENTRY_POINT_GROUP = "fedstore.backends"
#: The setting naming the chain explicitly (declared with the core's settings).
BACKENDS_SETTING = "FEDSTORE_BACKENDS"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """An installed backend, as its entry point declares it (nothing imported)."""

    name: str
    target: str
    distribution: str | None
    version: str | None

    @property
    def origin(self) -> str:
        dist = (
            f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        )
        return f"{self.target} ({dist})"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # importlib.metadata keeps the distribution of each entry point, which
    # stevedore's cache drops; loading still goes through stevedore.
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def available_backends() -> dict[str, BackendInfo]:
    """Installed backends by name, sorted, without importing any of them."""
    found: dict[str, BackendInfo] = {}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        found.setdefault(
            ep.name,
            BackendInfo(
                name=ep.name,
                target=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            ),
        )
    return dict(sorted(found.items()))


def _raise_load_failure(
    manager: object, ep: importlib.metadata.EntryPoint, err: BaseException
) -> None:
    raise BackendLoadError(
        f"backend plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: {err}",
        backend=ep.name,
    ) from err


def load_backend_class(name: str) -> type[StorageBackend]:
    """Import the class registered under *name*; raise :class:`BackendLoadError` if impossible."""
    if not name or not name.strip():
        raise BackendLoadError("empty backend name")
    name = name.strip()
    try:
        mgr: driver.DriverManager[type[StorageBackend]] = driver.DriverManager(
            namespace=ENTRY_POINT_GROUP,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=_raise_load_failure,
            on_missing_entrypoints_callback=None,
        )
    except NoMatches:
        installed = ", ".join(available_backends()) or "none"
        raise BackendLoadError(
            f"unknown backend {name!r}; installed backends: {installed}", backend=name
        ) from None
    except MultipleMatches as exc:
        raise BackendLoadError(
            f"backend name {name!r} is registered by more than one plugin: {exc}", backend=name
        ) from exc
    cls = mgr.driver
    if not (isinstance(cls, type) and issubclass(cls, StorageBackend)):
        raise BackendLoadError(
            f"backend plugin {name!r} does not provide a StorageBackend subclass (got {cls!r})",
            backend=name,
        )
    return cls


def backend_settings(name: str) -> tuple[Setting, ...]:
    """The settings the backend registered as *name* declares (imports its plugin)."""
    return tuple(load_backend_class(name).settings)


def validate_backend_settings(cls: type[StorageBackend], settings: Mapping[str, str]) -> None:
    """Check every declared setting of *cls* by its kind and range (ConfigError, one line)."""
    for setting in cls.settings:
        setting.validate(settings)


def load_backend(
    name: str, env: Mapping[str, str] | None = None, ctx: BackendContext | None = None
) -> StorageBackend:
    """Construct the backend registered as *name* from settings *env* (default: ``os.environ``).

    The backend's declared settings are validated first
    (:class:`~fedstore.errors.ConfigError` naming the setting), then
    ``create(env, ctx)`` runs (*ctx* default: no data directory, no host).
    Raises :class:`BackendLoadError` for unknown or broken plugins and
    :class:`~fedstore.errors.NotConfiguredError` when the backend lacks
    required settings.
    """
    cls = load_backend_class(name)
    settings = os.environ if env is None else env
    validate_backend_settings(cls, settings)
    try:
        return cls.create(settings, BackendContext() if ctx is None else ctx)
    except BackendLoadError:
        raise
    except Exception as exc:
        from fedstore.errors import FedstoreError

        if isinstance(exc, FedstoreError):
            raise
        raise BackendLoadError(
            f"backend {name!r} failed to start: {type(exc).__name__}: {exc}", backend=name
        ) from exc


def parse_backend_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (deduplicated, order kept)."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


@dataclass(frozen=True, slots=True)
class ChainMember:
    """A backend of the default chain and why it joined (see :func:`detect_default_chain`)."""

    name: str
    priority: int
    reason: str


def installed_classes() -> tuple[dict[str, type[StorageBackend]], dict[str, str]]:
    """Every installed backend class by name, and the load error of each broken plugin."""
    classes: dict[str, type[StorageBackend]] = {}
    broken: dict[str, str] = {}
    for name in available_backends():
        try:
            classes[name] = load_backend_class(name)
        except BackendLoadError as exc:
            broken[name] = str(exc)
    return classes, broken


def detect_default_chain(
    env: Mapping[str, str] | None = None, ctx: BackendContext | None = None
) -> list[ChainMember]:
    """Ask every installed backend whether it joins the default chain; ordered, highest first.

    A plugin that fails to import, or whose ``detect`` raises, is left out
    with one warning line: a broken third-party plugin must not stop the
    built-in ones.
    """
    settings = os.environ if env is None else env
    context = BackendContext() if ctx is None else ctx
    classes, broken = installed_classes()
    for message in broken.values():
        log.warning("%s; left out of the default chain", message)
    members: list[ChainMember] = []
    for name, cls in classes.items():
        try:
            found = cls.detect(settings, context)
        except Exception as exc:
            log.warning(
                "backend %s: detection failed (%s: %s); left out of the default chain",
                name,
                type(exc).__name__,
                exc,
            )
            continue
        if found is not None:
            members.append(ChainMember(name, found.priority, found.reason))
    members.sort(key=lambda m: (-m.priority, m.name))
    return members


def default_backend_names(
    env: Mapping[str, str] | None = None, ctx: BackendContext | None = None
) -> list[str]:
    """The chain used when the user names none.

    ``FEDSTORE_BACKENDS`` wins when set. Otherwise every installed backend's
    :meth:`~fedstore.backends.StorageBackend.detect` decides whether and
    where it joins (:func:`detect_default_chain`). With the built-in plugins
    this gives ``filesystem``, preceded by ``kubo`` when a Kubo API is
    configured or discoverable and by ``pinata`` when Pinata credentials are
    set; inside a running node (*ctx* with a host) the peers come last.
    """
    settings = os.environ if env is None else env
    explicit = settings.get(BACKENDS_SETTING, "").strip()
    if explicit:
        return parse_backend_list(explicit)
    return [m.name for m in detect_default_chain(settings, ctx)]


def build_backends(
    names: list[str] | str | None = None,
    env: Mapping[str, str] | None = None,
    ctx: BackendContext | None = None,
) -> list[StorageBackend]:
    """Construct the named backends, skipping unconfigured ones with one log line each.

    Unknown or broken plugins raise :class:`BackendLoadError` and invalid
    setting values :class:`~fedstore.errors.ConfigError`: a typo in the
    configuration must not silently fall back to another store.
    """
    from fedstore.errors import NotConfiguredError

    settings = os.environ if env is None else env
    if names is None:
        names = default_backend_names(settings, ctx)
    elif isinstance(names, str):
        names = parse_backend_list(names)
    backends: list[StorageBackend] = []
    skipped: list[str] = []
    for name in names:
        try:
            backends.append(load_backend(name, settings, ctx))
        except NotConfiguredError as exc:
            log.warning("skipping backend %s: %s", name, exc)
            skipped.append(f"{name} ({exc})")
    if not backends:
        raise NotConfiguredError(
            "no usable backend: " + ("; ".join(skipped) if skipped else "none configured")
        )
    return backends
