"""fedstore's public backend API: the contract plugins implement and the tools the core offers.

A plugin imports from here only (plus :mod:`fedstore.errors`,
:mod:`fedstore.ipld.cid` and :mod:`fedstore.ipld.car` for content addressing)::

    from fedstore.backends import BackendContext, Setting, StorageBackend, StoredObject, Health

The contract (:class:`StorageBackend`, :class:`BackendContext`,
:class:`Setting`, ...) is imported at once and is light; the chain and the
registry (trio, stevedore) load on first use, so reading the configuration
does not pay for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fedstore.backends.base import (
    BackendContext,
    Detected,
    Health,
    NodeHost,
    Source,
    StorageBackend,
    StoredObject,
    lifespan_nursery,
)
from fedstore.backends.settings import Setting, SettingKind

if TYPE_CHECKING:
    from fedstore.backends.chain import (
        Attempt,
        BackendChain,
        ChainAddResult,
        FetchResult,
        WriteObserver,
        aclosing_stream,
    )
    from fedstore.backends.registry import (
        BACKENDS_SETTING,
        ENTRY_POINT_GROUP,
        BackendInfo,
        ChainMember,
        available_backends,
        backend_settings,
        build_backends,
        default_backend_names,
        detect_default_chain,
        installed_classes,
        load_backend,
        load_backend_class,
        parse_backend_list,
        validate_backend_settings,
    )

__all__ = [
    "BACKENDS_SETTING",
    "ENTRY_POINT_GROUP",
    "Attempt",
    "BackendChain",
    "BackendContext",
    "BackendInfo",
    "ChainAddResult",
    "ChainMember",
    "Detected",
    "FetchResult",
    "Health",
    "NodeHost",
    "Setting",
    "SettingKind",
    "Source",
    "StorageBackend",
    "StoredObject",
    "WriteObserver",
    "aclosing_stream",
    "available_backends",
    "backend_settings",
    "build_backends",
    "build_chain",
    "default_backend_names",
    "detect_default_chain",
    "installed_classes",
    "load_backend",
    "load_backend_class",
    "parse_backend_list",
    "lifespan_nursery",
    "validate_backend_settings",
]

_LAZY = {
    **dict.fromkeys(
        [
            "Attempt",
            "BackendChain",
            "ChainAddResult",
            "FetchResult",
            "WriteObserver",
            "aclosing_stream",
        ],
        "chain",
    ),
    **dict.fromkeys(
        [
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
        ],
        "registry",
    ),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def build_chain(
    names: list[str] | str | None = None,
    env: Mapping[str, str] | None = None,
    ctx: BackendContext | None = None,
) -> BackendChain:
    """A :class:`BackendChain` of the named backends (default: :func:`default_backend_names`).

    Use it as ``async with build_chain(...) as chain:`` so the backends'
    lifespans run while the chain is in use.
    """
    from fedstore.backends.chain import BackendChain
    from fedstore.backends.registry import build_backends

    return BackendChain(build_backends(names, env, ctx))
