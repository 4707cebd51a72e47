"""The node: a libp2p peer with a local checkpoint store, a catalog and a backend chain.

* :mod:`~fedstore.node.core` - :class:`Node`, :func:`open_node`, :func:`serve_node`;
* :mod:`~fedstore.node.replication` - pin rows for a checkpoint stored through
  the chain, and re-pinning what failed.
"""

from __future__ import annotations

from fedstore.node.core import Head, Node, PublishResult, open_node, payload_digest, serve_node

__all__ = ["Head", "Node", "PublishResult", "open_node", "payload_digest", "serve_node"]
