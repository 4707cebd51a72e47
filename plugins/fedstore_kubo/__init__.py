"""fedstore's Kubo backend (entry point ``kubo`` in ``fedstore.backends``).

Stores checkpoints in a Kubo (go-ipfs) node through its HTTP RPC API; see
:mod:`fedstore_kubo.backend` for the request shapes and error handling, and
:mod:`fedstore_kubo.testing` for an in-process fake Kubo used by the tests.
"""

from fedstore_kubo.backend import KuboBackend

__all__ = ["KuboBackend"]
