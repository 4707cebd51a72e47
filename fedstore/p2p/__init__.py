"""fedstore's peer-to-peer layer: libp2p host, topics, wire codecs, head protocol, sync.

It knows nothing of training. :mod:`fedstore.node` composes it with the local
store, the catalog and the backend chain into a :class:`~fedstore.node.Node`.
"""

from fedstore.p2p.messages import ANNOUNCE_TOPIC, TRAINING_TOPIC, Announcement

__all__ = ["ANNOUNCE_TOPIC", "TRAINING_TOPIC", "Announcement"]
