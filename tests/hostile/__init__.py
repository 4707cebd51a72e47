"""Hostile peers for tests: real libp2p hosts on 127.0.0.1 that misbehave on purpose.

Tests drive fedstore's real node code against them over loopback (no
mocks): see :mod:`hostile.bitswap` for a lying and a stalling bitswap peer.
"""
