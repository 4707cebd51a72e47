"""A running federation's membership: who may send what, and who aggregates which round.

:class:`Membership` wraps a verified :class:`~fedstore.federation.manifest.SignedManifest`
with what the node and the round loops ask of it on every message:

* :meth:`Membership.allows` - the node's peer filter (non-members' messages
  are dropped inside the pubsub validator, before anything is decoded);
* :meth:`Membership.can` - whether a member holds a role (only trainers'
  updates are admitted, only aggregators' round control is followed);
* :meth:`Membership.duty_order` - the order in which aggregator-capable
  members take aggregation duty for a round: sorted by
  ``sha256(manifest CID | round | peer id)``, so every member computes the
  same order from the manifest alone, and duty moves from round to round;
* :meth:`Membership.strategy` - the manifest's strategy, constructed once.

:func:`load_membership` resolves the ``--federation`` / ``FEDSTORE_FEDERATION``
setting: a manifest file, or a manifest CID fetched through a callable
(the node's backend chain) and verified.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from fedstore.errors import InvalidCIDError, ManifestError
from fedstore.federation.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    SignedManifest,
    load_manifest_file,
    parse_signed,
)
from fedstore.federation.strategies.base import Strategy
from fedstore.federation.update_encoding import UpdateEncoding

__all__ = ["Membership", "load_membership", "manifest_source"]

#: bounds of the grace a standby aggregator gives the one before it, seconds
_MIN_GRACE = 0.5
_MAX_GRACE = 15.0


class Membership:
    """A verified manifest, with the questions the protocol asks of it (module docstring)."""

    def __init__(self, signed: SignedManifest) -> None:
        self.signed = signed
        self.manifest: Manifest = signed.manifest
        self.cid = signed.cid
        self._roles = {m.peer: m.roles for m in signed.manifest.members}
        self._strategy: Strategy | None = None
        self._orders: dict[int, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        m = self.manifest
        return f"Membership({m.name!r}, {self.cid}, {len(m.members)} members)"

    # -- membership ------------------------------------------------------------------
    def allows(self, peer: str) -> bool:
        """True if ``peer`` is a member (the node's peer filter)."""
        return peer in self._roles

    def can(self, peer: str, role: str) -> bool:
        return role in self._roles.get(peer, frozenset())

    @property
    def aggregators(self) -> tuple[str, ...]:
        return self.manifest.aggregators

    @property
    def trainers(self) -> tuple[str, ...]:
        return self.manifest.trainers

    # -- duty ------------------------------------------------------------------------
    def duty_order(self, round: int, *, skip: Iterable[str] = ()) -> tuple[str, ...]:
        """Aggregator-capable members in the order they take duty for ``round``.

        Position 0 opens and aggregates the round; position ``k`` takes over
        when the ones before it have not delivered (see
        :attr:`takeover_grace`). Members in ``skip`` (suspected locally: they
        failed to deliver or announced a model that did not verify) are left
        out, the others keep their relative order.
        """
        order = self._orders.get(round)
        if order is None:
            prefix = f"{self.cid}|{round}|".encode()
            order = tuple(
                sorted(self.aggregators, key=lambda p: hashlib.sha256(prefix + p.encode()).digest())
            )
            if len(self._orders) > 4096:
                self._orders.clear()
            self._orders[round] = order
        skipped = set(skip)
        kept = tuple(p for p in order if p not in skipped)
        return kept or order

    def position(self, peer: str, round: int, *, skip: Iterable[str] = ()) -> int | None:
        """``peer``'s place in :meth:`duty_order` (None if it cannot aggregate)."""
        order = self.duty_order(round, skip=skip)
        return order.index(peer) if peer in order else None

    @property
    def takeover_grace(self) -> float:
        """Seconds each standby aggregator waits after the one before it (a quarter round)."""
        return min(_MAX_GRACE, max(_MIN_GRACE, self.manifest.round_timeout / 4))

    @property
    def majority(self) -> int:
        """Announcements of one CID that adopt it in leaderless mode: a strict majority."""
        return len(self.aggregators) // 2 + 1

    @property
    def update_encoding(self) -> UpdateEncoding:
        """How trainers encode their updates (float32: lossless checkpoints)."""
        from fedstore.federation.update_encoding import UpdateEncoding

        return UpdateEncoding.parse(self.manifest.update_encoding)

    # -- strategy --------------------------------------------------------------------
    def strategy(self) -> Strategy:
        """The manifest's strategy (StrategyError if not installed or the settings are bad)."""
        if self._strategy is None:
            from fedstore.federation.strategies import load_strategy

            m = self.manifest
            self._strategy = load_strategy(m.strategy, dict(m.strategy_settings))
        return self._strategy


def manifest_source(text: str) -> tuple[str, str]:
    """Classify a ``--federation`` value: ``("file", path)`` or ``("cid", cid)``.

    An existing file wins; otherwise the text must be a CID
    (ManifestError for neither).
    """
    text = text.strip()
    if not text:
        raise ManifestError("empty federation setting: give a manifest file or its CID")
    if os.path.exists(text):
        return "file", text
    from fedstore.ipld.cid import parse_cid

    try:
        parse_cid(text)
    except InvalidCIDError:
        raise ManifestError(
            f"federation {text!r:.80} is neither a manifest file nor a manifest CID"
        ) from None
    return "cid", text


async def load_membership(
    source: str, fetch: Callable[[str, int], Awaitable[bytes]] | None = None
) -> Membership:
    """The membership named by ``source`` (a manifest file or CID).

    A CID is fetched with ``fetch(cid, max_size)`` (which must verify the
    bytes against the CID, as the backend chain does). ManifestError if the
    source is neither, cannot be fetched, or is not a valid signed manifest.
    """
    import trio

    kind, value = manifest_source(source)
    if kind == "file":
        signed = await trio.to_thread.run_sync(load_manifest_file, Path(value))
        return Membership(signed)
    if fetch is None:
        raise ManifestError(f"manifest {value} is not a local file and cannot be fetched here")
    from fedstore.errors import FedstoreError
    from fedstore.ipld import same_cid

    try:
        data = await fetch(value, MAX_MANIFEST_BYTES)
    except FedstoreError as exc:
        raise ManifestError(f"cannot fetch manifest {value}: {exc}") from exc
    signed = parse_signed(data)
    if not same_cid(signed.cid, value):
        raise ManifestError(f"manifest fetched as {value} is stored as {signed.cid}")
    return Membership(signed)
