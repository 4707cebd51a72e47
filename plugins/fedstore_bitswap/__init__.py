"""fedstore's ``bitswap`` backend: peers serve checkpoints to each other over libp2p.

Built on py-libp2p's Bitswap implementation (protocol ``/ipfs/bitswap/1.2.0``,
1.1.0 and 1.0.0), with the fixes listed in :mod:`fedstore_bitswap.engine`
and ``docs/BITSWAP.md``. It runs only inside a running node: the node builds
``bitswap`` with its host in the :class:`~fedstore.backends.BackendContext`
and keeps the backend's lifespan open while it runs.

Only :class:`BitswapBackend` is imported with the package (the registry
reads its declarations without loading py-libp2p's bitswap); the other names
load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedstore_bitswap.backend import BitswapBackend

if TYPE_CHECKING:
    from fedstore_bitswap.engine import FedstoreBitswapClient, ServeStats
    from fedstore_bitswap.fetch import DagFetch, FetchStats
    from fedstore_bitswap.limits import BitswapLimits, ByteBudget
    from fedstore_bitswap.service import BitswapService, attach

__all__ = [
    "BitswapBackend",
    "BitswapLimits",
    "BitswapService",
    "ByteBudget",
    "DagFetch",
    "FedstoreBitswapClient",
    "FetchStats",
    "ServeStats",
    "attach",
]

_LAZY = {
    "FedstoreBitswapClient": "engine",
    "ServeStats": "engine",
    "DagFetch": "fetch",
    "FetchStats": "fetch",
    "BitswapLimits": "limits",
    "ByteBudget": "limits",
    "BitswapService": "service",
    "attach": "service",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
