"""Hostile peers for tests: real libp2p hosts on 127.0.0.1 that misbehave on purpose.

Tests drive fedstore's real node code against them over loopback (no
mocks): :mod:`hostile.gossip` is a raw signed gossipsub writer (protocol-valid
messages with its own key, at a chosen rate); :mod:`hostile.bitswap` a lying
and a stalling bitswap peer.
"""
