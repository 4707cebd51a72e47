"""In-process bitswap nodes on 127.0.0.1 for the bitswap tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
from fedstore_bitswap import BitswapBackend, BitswapLimits, BitswapService, attach
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from fedstore.p2p import libp2p_patches

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
CHUNK = 262144


def make_host() -> Any:
    """A Noise host with fedstore's transport fixes applied (as ``open_host`` applies them)."""
    libp2p_patches.apply()
    key_pair = create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise})


@dataclass
class Node:
    host: Any
    service: BitswapService

    @property
    def backend(self) -> BitswapBackend:
        return BitswapBackend(self.service)

    @property
    def id(self) -> Any:
        return self.host.get_id()


async def run_host(stack: AsyncExitStack, host: Any) -> None:
    """Run *host* until *stack* closes, closing its connections while the swarm still runs.

    py-libp2p tears a dialled socket down in ``host.close()`` only before
    ``host.run()`` has stopped the swarm (as ``fedstore.p2p.host.open_host`` does).
    """
    await stack.enter_async_context(host.run(LOOPBACK))
    stack.push_async_callback(host.close)


async def start_nodes(
    stack: AsyncExitStack, tmp: Path, n: int, limits: Sequence[BitswapLimits | None] = ()
) -> list[Node]:
    nodes = []
    for i in range(n):
        host = make_host()
        await run_host(stack, host)
        lim = limits[i] if i < len(limits) else None
        service = await stack.enter_async_context(attach(host, tmp / f"node{i}", limits=lim))
        nodes.append(Node(host, service))
    return nodes


def payload(n: int) -> bytes:
    return os.urandom(n)
