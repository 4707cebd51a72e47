"""fedstore's ``bitswap`` backend: peers serve checkpoints to each other over libp2p.

Built on py-libp2p's Bitswap implementation (protocol ``/ipfs/bitswap/1.2.0``,
1.1.0 and 1.0.0), with the fixes listed in :mod:`fedstore_bitswap.engine`
and ``docs/BITSWAP.md``. It runs only inside a running node: the node enters
``BitswapBackend.attach(host, data_dir, peers=...)`` and the backend chain can
then construct ``bitswap``.
"""

from __future__ import annotations

from fedstore_bitswap.backend import BitswapBackend
from fedstore_bitswap.engine import FedstoreBitswapClient, ServeStats
from fedstore_bitswap.fetch import DagFetch, FetchStats
from fedstore_bitswap.limits import BitswapLimits, ByteBudget
from fedstore_bitswap.service import BitswapService, attach, find_service, running_services

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
    "find_service",
    "running_services",
]
