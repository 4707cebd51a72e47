"""The storage backend contract.

A backend is a thin adapter between fedstore and one place that can hold
content-addressed bytes: a directory, a Kubo daemon, Pinata, the peers.
Everything that is policy (which backend to try first, retries across
backends, verification of fetched bytes, catalog records, progress) lives in
the core (:mod:`fedstore.backends.chain`), not here.

Life of a backend
-----------------
1. **Declared.** A plugin registers its class in the ``fedstore.backends``
   entry-point group. The class declares its settings (:attr:`StorageBackend.settings`,
   a tuple of :class:`~fedstore.backends.Setting`) and may say whether it joins
   the default chain (:meth:`StorageBackend.detect`).
2. **Created.** :meth:`StorageBackend.create` gets the merged settings (flags,
   environment, ``.env``, ``fedstore.toml``) and a :class:`BackendContext`:
   the node's data directory and, inside a running node, its libp2p host.
   ``create`` does no network I/O; it raises
   :class:`~fedstore.errors.NotConfiguredError` when required settings are
   missing (the chain then skips the backend with one log line).
3. **Running.** Whoever owns the backend enters :meth:`StorageBackend.lifespan`
   (an async context manager) before using it and leaves it when done: the
   node for its whole lifetime, ``async with chain:`` for one command. A
   backend that serves something in the background (protocol handlers on the
   host, a refresh task) starts it there, in a nursery of its own, and stops
   it on exit. The default does nothing.
4. **Closed.** :meth:`StorageBackend.aclose` after the lifespan ends.

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
  is not an error. It reports the exact content size (``StoredObject.size``);
  the conformance suite checks it.
* ``aclose`` releases everything (HTTP pools, file handles) and is safe to
  call twice.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

from fedstore.backends.settings import Setting

if TYPE_CHECKING:
    import trio
    from libp2p.abc import IHost

__all__ = [
    "BackendContext",
    "Detected",
    "Health",
    "NodeHost",
    "Source",
    "StorageBackend",
    "StoredObject",
    "lifespan_nursery",
]

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


class NodeHost(Protocol):
    """What a backend may use of the running node's libp2p host (nothing else is promised)."""

    @property
    def peer_id(self) -> str:
        """This node's peer id (base58)."""
        ...

    @property
    def libp2p_host(self) -> IHost:
        """The py-libp2p host: set stream handlers, open streams, read the peer store."""
        ...

    def connected_peers(self) -> list[str]:
        """Peer ids (base58) connected now."""
        ...


@dataclass(frozen=True, slots=True)
class BackendContext:
    """Where a backend is being built: handed to :meth:`StorageBackend.create` and ``detect``.

    *data_dir* is the node's data directory (``FEDSTORE_DIR``), or None for a
    one-off command that runs without one (``fedstore put``); a backend that
    keeps local state per node keeps it under ``data_dir / <its name>``.
    *host* is the node's libp2p host while a node runs, else None: only a
    backend built inside a running node can talk to peers.
    """

    data_dir: Path | None = None
    host: NodeHost | None = None

    @property
    def in_node(self) -> bool:
        return self.host is not None


@dataclass(frozen=True, slots=True)
class Detected:
    """A backend's answer to :meth:`StorageBackend.detect`: join the default chain.

    Backends are ordered by *priority*, highest first (ties by name). The
    built-ins use 300 for a remote pinning service, 200 for a local daemon,
    100 for the local directory and 0 for the peers, so a third-party backend
    can place itself among them. *reason* says why, for ``fedstore backends``
    (``"PINATA_JWT is set"``).
    """

    priority: int
    reason: str


class StorageBackend(abc.ABC):
    """Abstract base of every storage backend (entry-point group ``fedstore.backends``).

    Subclasses set :attr:`name`, declare :attr:`settings`, implement the
    abstract methods and usually :meth:`create`; see the module docstring for
    the life of a backend.
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
    #: Every setting the backend reads (see :class:`~fedstore.backends.Setting`).
    #: The core validates their values before :meth:`create` and offers them in
    #: ``.env.example``, ``fedstore backends``, ``fedstore config show`` and the
    #: backend's ``[name]`` table of ``fedstore.toml``.
    settings: ClassVar[tuple[Setting, ...]] = ()

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        """Build an instance from the merged *settings* and the context *ctx*.

        *settings* maps setting names to text (unset settings are absent or
        ""; read them with the declared :class:`~fedstore.backends.Setting`
        objects, which apply defaults and ranges). Do no network I/O here.
        Raise :class:`~fedstore.errors.NotConfiguredError` when a required
        setting or context (e.g. a running node's host) is missing. The
        default takes no settings: ``cls()``.
        """
        return cls()

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        """Whether (and where) this backend joins the default chain; None: only when named.

        Called with the same arguments as :meth:`create`, for every installed
        backend, whenever the user names no chain (``FEDSTORE_BACKENDS`` unset).
        Must be cheap, never raise for missing settings, and do no network I/O
        (a file check such as "is there an API file" is fine).
        """
        return None

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """An async context manager that runs the backend's background work while open.

        Entered once by the owner of the backend before first use (the node,
        for its lifetime; ``async with chain``) and left before
        :meth:`aclose`. Exceptions raised inside propagate unchanged. The
        default does nothing. Override with::

            @asynccontextmanager
            async def lifespan(self) -> AsyncIterator[None]:
                async with lifespan_nursery() as nursery:
                    nursery.start_soon(self._refresh_forever)
                    yield
        """
        return _idle()

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


@asynccontextmanager
async def _idle() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def lifespan_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a lifespan's background tasks, cancelled when the block ends.

    Unlike a bare ``trio.open_nursery()`` around a ``yield``, an exception
    raised in the block propagates as itself, not wrapped in an
    ``ExceptionGroup``, as :meth:`StorageBackend.lifespan` promises. A
    background task that fails still ends the block with its error.
    """
    import trio

    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:  # re-raised below, outside the nursery
            raised = exc
        finally:
            nursery.cancel_scope.cancel()
    if raised is not None:
        raise raised
