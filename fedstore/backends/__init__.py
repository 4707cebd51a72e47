"""fedstore's public backend API: the contract plugins implement and the tools the core offers.

A plugin imports from here only (plus :mod:`fedstore.errors`,
:mod:`fedstore.ipld.cid` and :mod:`fedstore.ipld.car` for content addressing)::

    from fedstore.backends import StorageBackend, StoredObject, Health
"""

from __future__ import annotations

from collections.abc import Mapping

from fedstore.backends.base import Health, Source, StorageBackend, StoredObject
from fedstore.backends.chain import (
    Attempt,
    BackendChain,
    ChainAddResult,
    FetchResult,
    WriteObserver,
    aclosing_stream,
)
from fedstore.backends.registry import (
    ENTRY_POINT_GROUP,
    BackendInfo,
    available_backends,
    build_backends,
    default_backend_names,
    load_backend,
    load_backend_class,
    parse_backend_list,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Attempt",
    "BackendChain",
    "BackendInfo",
    "ChainAddResult",
    "FetchResult",
    "Health",
    "Source",
    "StorageBackend",
    "StoredObject",
    "WriteObserver",
    "aclosing_stream",
    "available_backends",
    "build_backends",
    "build_chain",
    "default_backend_names",
    "load_backend",
    "load_backend_class",
    "parse_backend_list",
]


def build_chain(
    names: list[str] | str | None = None, env: Mapping[str, str] | None = None
) -> BackendChain:
    """A :class:`BackendChain` of the named backends (default: :func:`default_backend_names`)."""
    return BackendChain(build_backends(names, env))
