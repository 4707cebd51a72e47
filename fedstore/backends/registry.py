"""Find storage backends by name through the ``fedstore.backends`` entry-point group.

Backends are plugins: any installed distribution can register one with::

    [project.entry-points."fedstore.backends"]
    mybackend = "my_package:MyBackend"

where ``MyBackend`` subclasses :class:`fedstore.backends.StorageBackend`. The
core never imports a plugin by module name; it asks stevedore for the entry
point named in the user's configuration. Errors are fedstore's own: an
unknown name lists the installed names, and a plugin that fails to import
names the plugin and the cause.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from stevedore import driver
from stevedore.exception import MultipleMatches, NoMatches

from fedstore.backends.base import StorageBackend
from fedstore.errors import BackendLoadError

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "available_backends",
    "load_backend",
    "load_backend_class",
]

ENTRY_POINT_GROUP = "fedstore.backends"

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


def load_backend(name: str, env: Mapping[str, str] | None = None) -> StorageBackend:
    """Construct the backend registered as *name* from *env* (default: ``os.environ``).

    Raises :class:`BackendLoadError` for unknown or broken plugins and
    :class:`~fedstore.errors.NotConfiguredError` when the backend lacks
    required settings.
    """
    cls = load_backend_class(name)
    settings = os.environ if env is None else env
    try:
        return cls.from_env(settings)
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
    """``"pinata, kubo,filesystem"`` -> ``["pinata", "kubo", "filesystem"]`` (deduplicated)."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in names:
            names.append(part)
    return names


def default_backend_names(
    env: Mapping[str, str] | None = None, *, in_node: bool = False
) -> list[str]:
    """The chain used when the user names none.

    ``FEDSTORE_BACKENDS`` wins when set. Otherwise the embedded default is the
    ``filesystem`` backend, preceded by ``kubo`` when a Kubo API is
    configured or discoverable, and by ``pinata, kubo`` when Pinata
    credentials are set (hosted pinning first, the local daemon as the
    fallback, the filesystem next). Inside a running node (*in_node*), the
    peers themselves come last: ``bitswap`` (when installed) after the
    filesystem, so a read tries the cheap local lookup before the network.
    Names only; no plugin is imported here.
    """
    env = os.environ if env is None else env
    explicit = env.get("FEDSTORE_BACKENDS", "").strip()
    if explicit:
        return parse_backend_list(explicit)
    names = ["filesystem"]
    ipfs_path = env.get("IPFS_PATH") or os.path.join(os.path.expanduser("~"), ".ipfs")
    if env.get("FEDSTORE_KUBO_API") or os.path.exists(os.path.join(ipfs_path, "api")):
        names.insert(0, "kubo")
    if env.get("PINATA_JWT") or (env.get("PINATA_API_KEY") and env.get("PINATA_API_SECRET")):
        names = ["pinata", "kubo", *[n for n in names if n != "kubo"]]
    if in_node and "bitswap" in available_backends():
        names.append("bitswap")
    return names


def build_backends(
    names: list[str] | str | None = None, env: Mapping[str, str] | None = None
) -> list[StorageBackend]:
    """Construct the named backends, skipping unconfigured ones with one log line each.

    Unknown or broken plugins raise :class:`BackendLoadError`: a typo in the
    configuration must not silently fall back to another store.
    """
    from fedstore.errors import NotConfiguredError

    settings = os.environ if env is None else env
    if names is None:
        names = default_backend_names(settings)
    elif isinstance(names, str):
        names = parse_backend_list(names)
    backends: list[StorageBackend] = []
    skipped: list[str] = []
    for name in names:
        try:
            backends.append(load_backend(name, settings))
        except NotConfiguredError as exc:
            log.warning("skipping backend %s: %s", name, exc)
            skipped.append(f"{name} ({exc})")
    if not backends:
        raise NotConfiguredError(
            "no usable backend: " + ("; ".join(skipped) if skipped else "none configured")
        )
    return backends
