"""The node: a libp2p peer with a local checkpoint store, a catalog and a backend chain.

* :mod:`~fedstore.node.core` - :class:`Node`, :func:`open_node`, :func:`serve_node`;
* :mod:`~fedstore.node.events` - what a node reports (frozen dataclasses);
* :mod:`~fedstore.node.status` - those events as ``KEY=value`` status lines, and back;
* :mod:`~fedstore.node.driver` - drives ``fedstore node`` subprocesses by their status lines;
* :mod:`~fedstore.node.replication` - pin rows for a checkpoint stored through
  the chain, and re-pinning what failed.

Importing this package is cheap: :mod:`~fedstore.node.core` (py-libp2p,
SQLAlchemy, numpy) loads on first use of a name that lives there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedstore.node.core import (
        Head,
        Node,
        PublishResult,
        open_node,
        payload_digest,
        serve_node,
    )

__all__ = ["Head", "Node", "PublishResult", "open_node", "payload_digest", "serve_node"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("fedstore.node.core"), name)
