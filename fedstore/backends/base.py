"""The storage backend contract.

A backend is a thin adapter between fedstore and one place that can hold
content-addressed bytes: a directory, a Kubo daemon, Pinata, the peers.
Everything that is policy (which backend to try first, retries across
backends, verification of fetched bytes, catalog records, progress) lives in
the core (:mod:`fedstore.backends.chain`), not here.

Rules every implementation follows
----------------------------------
* All methods are ``async`` and must never block the trio event loop: file
  I/O and hashing of large data go through ``trio.to_thread.run_sync``;
  network I/O uses an async client (httpx.AsyncClient works on trio).
* Errors are fedstore's own (:mod:`fedstore.errors`). A backend translates
  every third-party exception at its boundary into the most specific class:
  :class:`NotFoundError` (CID absent), :class:`UnavailableError` (connection
  refused, timeout, 5xx), :class:`RateLimitedError` (429, with
  ``retry_after``), :class:`AuthError` (401/403), :class:`QuotaError`,
  :class:`CIDMismatchError` (the service stored the bytes under a CID other
  than the one fedstore computes for them). Messages never contain secrets.
* ``fetch`` yields bytes *as the backend has them*; it does not have to
  verify them. The core verifies every fetched byte against the CID before
  anyone sees it, so a backend must not cache or publish fetched data on its
  own.
* ``add`` is idempotent: adding the same bytes twice gives the same CID and
  is not an error.
* ``aclose`` releases everything (HTTP pools, file handles) and is safe to
  call twice.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

__all__ = ["Health", "Source", "StorageBackend", "StoredObject"]

#: What ``add`` accepts: bytes held in memory, or a path to a file on disk
#: (streamed, never read whole into memory by a well-behaved backend).
Source = bytes | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a backend reports after storing or pinning an object."""

    cid: str
    size: int
    #: The backend's own handle for the object (Pinata's file id, ...), if any.
    backend_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """Result of :meth:`StorageBackend.health`."""

    reachable: bool
    authenticated: bool | None = None
    version: str | None = None
    detail: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reachable and self.authenticated is not False

    def line(self) -> str:
        """One human-readable line, e.g. ``ok (v0.30.0)`` or ``unreachable: ...``."""
        if not self.reachable:
            state = "unreachable"
        elif self.authenticated is False:
            state = "auth failed"
        else:
            state = "ok"
        parts = [state]
        if self.version:
            parts.append(f"({self.version})")
        text = " ".join(parts)
        return f"{text}: {self.detail}" if self.detail else text


class StorageBackend(abc.ABC):
    """Abstract base of every storage backend (entry-point group ``fedstore.backends``).

    Subclasses set :attr:`name` and implement the abstract methods. The
    registry constructs a backend with :meth:`from_env`, passing the process
    environment (plus ``fedstore.toml`` settings); a backend that lacks
    required settings raises :class:`~fedstore.errors.NotConfiguredError`
    there, and the chain skips it with one log line.
    """

    #: The name users configure it by (matches its entry point name).
    name: ClassVar[str] = "?"
    #: Whether ``pin``/``unpin`` are meaningful (used by the conformance suite).
    supports_pinning: ClassVar[bool] = True
    #: A backend that serves the node's own copies to peers (bitswap) sets this:
    #: the node then stores every checkpoint it holds on it as well, not only on
    #: the first backend of the chain that accepted it. Such an ``add`` must be
    #: local and cheap (no network upload).
    keeps_local_copy: ClassVar[bool] = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Build an instance from environment-style settings.

        Raise :class:`~fedstore.errors.NotConfiguredError` when a required
        setting is missing. The default takes no settings.
        """
        return cls()

    @abc.abstractmethod
    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store *source* (bytes, or a path to a file) and return its CID.

        The CID must be the one Kubo's ``ipfs add --cid-version=N`` gives for
        the same bytes (256 KiB chunks, balanced layout; raw leaves for v1);
        a service that answers with another CID raises
        :class:`~fedstore.errors.CIDMismatchError`. *name* and *labels* are
        advisory metadata (round, peer, model) a service may keep.
        The object is pinned/kept by the backend after a successful add.
        """

    @abc.abstractmethod
    def fetch(self, cid: str) -> AsyncIterator[bytes]:
        """Yield the content bytes of *cid* in order, in chunks.

        Implemented as an async generator. Raises
        :class:`~fedstore.errors.NotFoundError` if the backend does not hold
        the CID (before yielding anything, where it can tell), and
        :class:`~fedstore.errors.UnavailableError` on transport failure, also
        in the middle of the stream. Bytes are not verified here; the caller
        verifies.
        """

    @abc.abstractmethod
    async def has(self, cid: str) -> bool:
        """Whether the backend holds *cid* now, without fetching it."""

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Ask the backend to keep *cid*. Default: succeed if :meth:`has` is true.

        Raises :class:`~fedstore.errors.NotFoundError` if the backend neither
        holds nor can obtain the CID.
        """
        from fedstore.errors import NotFoundError

        if not await self.has(cid):
            raise NotFoundError(f"{self.name}: cannot pin {cid}: not held", backend=self.name)
        return StoredObject(cid=cid, size=-1)

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:  # noqa: B027
        """Stop keeping *cid*. Idempotent: unpinning an absent CID is not an error.

        *backend_ref* is the handle :meth:`add`/:meth:`pin` returned, for
        services that delete by their own id. Default: nothing to do.
        """

    @abc.abstractmethod
    async def health(self) -> Health:
        """Report reachable / authenticated / version. Never raises for a dead service."""

    async def aclose(self) -> None:  # noqa: B027
        """Release resources. Safe to call more than once. Default: nothing."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
