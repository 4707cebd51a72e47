"""fedstore's Pinata backend (entry point ``pinata`` in ``fedstore.backends``).

Pins checkpoints on Pinata (v3 API with a JWT, or the legacy API with a key
pair) on the public IPFS network and reads them back through a dedicated
gateway. See :mod:`fedstore_pinata.backend` for request shapes and the CID
policy, :mod:`fedstore_pinata.config` for settings, and
:mod:`fedstore_pinata.testing` for an in-process fake Pinata.
"""

from fedstore_pinata.backend import PinataBackend
from fedstore_pinata.config import PinataConfig

__all__ = ["PinataBackend", "PinataConfig"]
