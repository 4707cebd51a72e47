"""The backend chain: the one place that walks storage backends (write policy, verified reads).

Policy lives here, not in the backends, and nowhere else in fedstore:

* **Writes** (:meth:`BackendChain.add`) go to the first backend that accepts
  them, in the configured order (e.g. ``pinata, kubo, filesystem``), AND to
  every backend after it that keeps a local copy
  (:attr:`~fedstore.backends.StorageBackend.keeps_local_copy`: bitswap, which
  serves the node's objects to its peers). So whatever a node adds (its
  checkpoints, topic payloads sent by CID, federation updates) can be fetched
  by peers on other machines. The CID is computed locally first; a backend
  that answers with another CID (compared with :func:`fedstore.ipld.same_cid`)
  counts as a failure (:class:`~fedstore.errors.CIDMismatchError`).
  :meth:`BackendChain.keep_local_copies` runs the second half alone (for
  objects the node obtained otherwise, e.g. fetched by a sync).
* A :class:`WriteObserver` passed to a write hears about every backend attempt
  as it happens (started, then finished with its :class:`Attempt`): this is
  how the catalog's pin rows are kept (:mod:`fedstore.node.replication`).
* **Reads** try each backend in order. Fetched bytes are streamed through a
  :class:`~fedstore.ipld.cid.CidVerifier`; data whose CID does not match is
  discarded, logged and the next backend is tried. No unverified byte ever
  reaches a caller: ``fetch_to_file`` writes to a temporary file and renames
  it into place (durably: file and directory are fsynced) only after
  verification; ``fetch_bytes`` returns only verified bytes. A backend's byte
  stream is closed deterministically (``aclose``) when a read stops early.
* **Errors at the boundary**: a backend should raise fedstore errors only; a
  foreign exception from a plugin (a bug, an untranslated library error) is
  translated here the same way for reads and writes, into
  :class:`~fedstore.errors.UnavailableError` chained to the original, recorded
  as that backend's attempt, and the next backend is tried. Errors get their
  ``cid``/``backend`` context filled in; the error raised when every backend
  failed carries all ``attempts``, and its class follows from theirs
  (``isinstance``, e.g. :class:`~fedstore.errors.NotFoundError` only when no
  backend had the object).
* Hashing, temporary files and disk writes of fetched data run in worker
  threads, so a large fetch never blocks the trio event loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, TypeVar

import trio

from fedstore.backends.base import Health, Source, StorageBackend, StoredObject
from fedstore.errors import (
    Attempt,
    CIDMismatchError,
    FedstoreError,
    IntegrityError,
    NotConfiguredError,
    NotFoundError,
    SizeLimitError,
    UnavailableError,
)
from fedstore.fsutil import fsync_dir
from fedstore.ipld.cidstr import same_cid

__all__ = [
    "Attempt",
    "BackendChain",
    "ChainAddResult",
    "FetchResult",
    "WriteObserver",
    "aclosing_stream",
]

log = logging.getLogger(__name__)

#: Fetched data is hashed and written in batches of about this many bytes.
_BATCH = 4 * 1024 * 1024
#: Default cap for :meth:`BackendChain.fetch_bytes` (in memory).
DEFAULT_MAX_FETCH_BYTES = 2 * 1024**3

ProgressFn = Callable[[int], None]
T = TypeVar("T")


class WriteObserver(Protocol):
    """Told about each backend attempt of one chain write, in order, as it happens.

    ``attempt_started`` runs just before a backend is asked to store *cid*,
    ``attempt_finished`` right after, with the outcome. An exception raised by
    the observer propagates out of the write (the observer is the caller's).
    """

    async def attempt_started(self, cid: str, backend: str) -> None: ...

    async def attempt_finished(self, cid: str, attempt: Attempt) -> None: ...


@dataclass(frozen=True, slots=True)
class ChainAddResult:
    """A write's outcome: *stored_on* is the backend that accepted it first.

    *attempts* lists every backend tried, in order: those that failed before
    *stored_on*, *stored_on* itself, then the local-copy backends after it.
    """

    cid: str
    size: int
    stored_on: str
    backend_ref: str | None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def copies(self) -> list[str]:
        """Every backend that now holds the object."""
        return [a.backend for a in self.attempts if a.ok]


@dataclass(frozen=True, slots=True)
class FetchResult:
    cid: str
    size: int
    backend: str
    attempts: list[Attempt] = field(default_factory=list)


@asynccontextmanager
async def aclosing_stream(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``contextlib.aclosing`` for anything typed ``AsyncIterator`` (a backend's byte stream).

    On exit the stream's ``aclose()`` runs if it has one (async generators
    do), so a read that stops early, fails or is cancelled runs the backend's
    cleanup now, not whenever the garbage collector finalises the generator.
    """
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def summarize(attempts: Sequence[Attempt]) -> str:
    """``name: error; name: error`` for the attempts that failed."""
    return "; ".join(f"{a.backend}: {a.describe()}" for a in attempts if not a.ok)


def at_boundary(exc: Exception, backend: str, cid: str, doing: str) -> FedstoreError:
    """The fedstore error that *exc*, raised by *backend* while *doing* (on) *cid*, becomes.

    A fedstore error is kept, with its ``cid``/``backend`` context filled in
    where the backend left it empty. Anything else is a plugin leaking a
    foreign exception: it becomes an :class:`UnavailableError` whose
    ``__cause__`` is the original.
    """
    if isinstance(exc, FedstoreError):
        if exc.backend is None:
            exc.backend = backend
        if exc.cid is None:
            exc.cid = cid
        return exc
    log.warning(
        "backend %s raised a non-fedstore %s while %s %s",
        backend,
        type(exc).__name__,
        doing,
        cid,
        exc_info=exc,
    )
    err = UnavailableError(
        f"{backend} failed while {doing} {cid}: {type(exc).__name__}: {exc}",
        backend=backend,
        cid=cid,
    )
    err.__cause__ = exc
    return err


class BackendChain:
    """An ordered list of backends: the write policy, fallback and verification.

    The chain owns its backends: :meth:`aclose` closes them all. Entered as
    ``async with chain:`` it also runs every backend's
    :meth:`~fedstore.backends.StorageBackend.lifespan` (in chain order, left
    in reverse) for the duration of the block, then closes them.
    """

    def __init__(self, backends: Sequence[StorageBackend]) -> None:
        if not backends:
            raise NotConfiguredError("the backend chain is empty: configure at least one backend")
        self._backends = list(backends)
        self._lifespans: AsyncExitStack | None = None

    @property
    def backends(self) -> list[StorageBackend]:
        return list(self._backends)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self._backends]

    def __repr__(self) -> str:
        return f"<BackendChain {','.join(self.names)}>"

    def subset(self, keep: Callable[[StorageBackend], bool]) -> BackendChain | None:
        """A chain of this chain's backends for which *keep* is true (same order), or None.

        The subset shares the backends: close this chain, not the subset.
        """
        chosen = [b for b in self._backends if keep(b)]
        return BackendChain(chosen) if chosen else None

    def get(self, name: str) -> StorageBackend:
        for b in self._backends:
            if b.name == name:
                return b
        raise NotConfiguredError(
            f"backend {name!r} is not in the chain ({', '.join(self.names)})", backend=name
        )

    # -- writes ---------------------------------------------------------

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        expected_cid: str | None = None,
        observer: WriteObserver | None = None,
    ) -> ChainAddResult:
        """Store *source* by the write policy (module docstring): the first backend
        that accepts it, then every later backend that keeps a local copy.

        *expected_cid* is the CID fedstore computed locally; when omitted it is
        computed here (in a worker thread). Failures of local-copy backends
        after the first acceptance are recorded in the result's ``attempts``
        (and told to *observer*), never raised. Raises
        :class:`~fedstore.errors.UnavailableError` with every backend's
        failure in its ``attempts`` when none accepts.
        """
        cid = expected_cid or await _cid_of(source, cid_version)
        attempts: list[Attempt] = []
        accepted: tuple[Attempt, StoredObject] | None = None
        for backend in self._backends:
            if accepted is not None and not backend.keeps_local_copy:
                continue
            attempt, stored = await self._store_on(
                backend, source, cid, cid_version, name, labels, observer
            )
            attempts.append(attempt)
            if accepted is None and stored is not None:
                accepted = (attempt, stored)
                if len(attempts) > 1:
                    log.info(
                        "%s stored on %s after %d failed backend(s)",
                        cid,
                        backend.name,
                        len(attempts) - 1,
                    )
        if accepted is None:
            raise UnavailableError(
                f"no backend accepted {cid} ({summarize(attempts)})", cid=cid, attempts=attempts
            )
        first, stored = accepted
        return ChainAddResult(
            cid=cid,
            size=stored.size,
            stored_on=first.backend,
            backend_ref=first.backend_ref,
            attempts=attempts,
        )

    async def keep_local_copies(
        self,
        source: Source,
        cid: str,
        *,
        observer: WriteObserver | None = None,
        missing_only: bool = False,
        skip: Sequence[str] = (),
    ) -> list[Attempt]:
        """Store *source* (whose CID is *cid*) on every backend that keeps a local copy.

        For objects the node holds without having written them through
        :meth:`add` (fetched by a sync, or a copy a crash interrupted). With
        *missing_only*, a backend whose ``has`` already reports *cid* is not
        written to (its attempt succeeds at once). Backends named in *skip* are
        left out.
        Failures are returned (and told to *observer*), never raised.
        """
        from fedstore.ipld.cid import parse_cid

        version = parse_cid(cid).version
        attempts: list[Attempt] = []
        for backend in self._backends:
            if not backend.keeps_local_copy or backend.name in skip:
                continue
            if missing_only and await self._holds(backend, cid):
                attempt = Attempt(backend.name)  # nothing to do: it holds the object already
                if observer is not None:
                    await observer.attempt_started(cid, backend.name)
                    await observer.attempt_finished(cid, attempt)
            else:
                attempt, _ = await self._store_on(
                    backend, source, cid, version, None, None, observer
                )
            attempts.append(attempt)
        return attempts

    async def _store_on(
        self,
        backend: StorageBackend,
        source: Source,
        cid: str,
        cid_version: int,
        name: str | None,
        labels: Mapping[str, str] | None,
        observer: WriteObserver | None,
    ) -> tuple[Attempt, StoredObject | None]:
        """One backend's write attempt, checked against *cid*, errors translated, observed."""
        if observer is not None:
            await observer.attempt_started(cid, backend.name)
        stored: StoredObject | None = None
        try:
            stored = await backend.add(source, cid_version=cid_version, name=name, labels=labels)
            if not same_cid(stored.cid, cid):
                raise CIDMismatchError(
                    f"{backend.name} stored the data as {stored.cid}, but fedstore computes {cid}",
                    backend=backend.name,
                    cid=cid,
                )
        except Exception as exc:  # recorded as this backend's attempt; the next one is tried
            error = at_boundary(exc, backend.name, cid, "storing")
            log.warning("backend %s did not store %s: %s", backend.name, cid, error)
            attempt = Attempt(backend.name, error)
            stored = None
        else:
            attempt = Attempt(backend.name, backend_ref=stored.backend_ref)
        if observer is not None:
            await observer.attempt_finished(cid, attempt)
        return attempt, stored

    @staticmethod
    async def _holds(backend: StorageBackend, cid: str) -> bool:
        try:
            return await backend.has(cid)
        except Exception as exc:  # cannot tell: treat as missing
            log.info(
                "%s: has(%s) failed: %s",
                backend.name,
                cid,
                at_boundary(exc, backend.name, cid, "checking"),
            )
            return False

    # -- reads ----------------------------------------------------------

    async def fetch_to_file(
        self,
        cid: str,
        dest: str | os.PathLike[str],
        *,
        max_size: int | None = None,
        progress: ProgressFn | None = None,
    ) -> FetchResult:
        """Fetch *cid* into *dest*, verified; *dest* appears only if verification passed.

        Tries each backend in order. The bytes go to a temporary file beside
        *dest*, which is fsynced and renamed into place after verification,
        and the directory is fsynced so the rename survives a crash (all in
        worker threads). Raises :class:`NotFoundError` when no backend has it,
        :class:`IntegrityError` when every copy found was corrupt,
        :class:`SizeLimitError` when every copy was too large, else
        :class:`UnavailableError`; each with every ``attempts``.
        """
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        dest_path = Path(dest)
        attempts: list[Attempt] = []
        for backend in self._backends:
            part = await trio.to_thread.run_sync(_PartFile.beside, dest_path)
            try:
                size = await self._stream_verified(backend, cid, part.fh, max_size, progress)
                await trio.to_thread.run_sync(part.commit, dest_path)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(part.discard)
                if not isinstance(exc, FedstoreError | OSError):
                    raise
                error = (
                    exc
                    if isinstance(exc, FedstoreError)
                    else UnavailableError(
                        f"writing {cid} from {backend.name} to {dest_path} failed: "
                        f"{exc.strerror or exc}",
                        backend=backend.name,
                        cid=cid,
                    )
                )
                self._log_fetch_failure(backend, cid, error)
                attempts.append(Attempt(backend.name, error))
                continue
            attempts.append(Attempt(backend.name))
            return FetchResult(cid=cid, size=size, backend=backend.name, attempts=attempts)
        raise _fetch_failure(cid, attempts)

    async def fetch_bytes(
        self,
        cid: str,
        *,
        max_size: int = DEFAULT_MAX_FETCH_BYTES,
        progress: ProgressFn | None = None,
    ) -> bytes:
        """Fetch *cid* into memory, verified. Refuses more than *max_size* bytes.

        *progress(bytes so far)* is called as verified data arrives (as for
        :meth:`fetch_to_file`). Errors as for :meth:`fetch_to_file`.
        """
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        attempts: list[Attempt] = []
        for backend in self._backends:
            sink = _MemorySink()
            try:
                await self._stream_verified(backend, cid, sink, max_size, progress)
            except FedstoreError as exc:
                self._log_fetch_failure(backend, cid, exc)
                attempts.append(Attempt(backend.name, exc))
                continue
            # joining the chunks copies the whole object: off the event loop
            return await trio.to_thread.run_sync(sink.getvalue)
        raise _fetch_failure(cid, attempts)

    async def _stream_verified(
        self,
        backend: StorageBackend,
        cid: str,
        sink: IO[bytes] | _MemorySink,
        max_size: int | None,
        progress: ProgressFn | None,
    ) -> int:
        """Stream *backend*'s copy of *cid* into *sink*, verified; fedstore errors only."""
        from fedstore.ipld.cid import CidVerifier

        verifier = CidVerifier(cid, max_size=max_size)
        batch: list[bytes] = []
        pending = 0
        total = 0

        def flush(chunks: list[bytes]) -> None:
            for c in chunks:
                verifier.update(c)
                sink.write(c)

        try:
            async with aclosing_stream(backend.fetch(cid)) as stream:
                async for chunk in stream:
                    if not chunk:
                        continue
                    total += len(chunk)
                    if max_size is not None and total > max_size:
                        raise SizeLimitError(
                            f"{backend.name} sent more than {max_size} bytes for {cid}",
                            backend=backend.name,
                            cid=cid,
                        )
                    batch.append(chunk)
                    pending += len(chunk)
                    if pending >= _BATCH:
                        await trio.to_thread.run_sync(flush, batch)
                        batch, pending = [], 0
                        if progress is not None:
                            progress(total)
            if batch:
                await trio.to_thread.run_sync(flush, batch)
            await trio.to_thread.run_sync(verifier.verify)
        except Exception as exc:  # the same translation as for writes
            error = at_boundary(exc, backend.name, cid, "sending")
            if error is exc:
                raise
            raise error from exc
        if progress is not None:
            progress(total)
        return total

    @staticmethod
    def _log_fetch_failure(backend: StorageBackend, cid: str, exc: BaseException) -> None:
        if isinstance(exc, IntegrityError):
            log.error("rejected data from %s for %s: %s", backend.name, cid, exc)
        elif isinstance(exc, NotFoundError):
            log.info("%s does not have %s", backend.name, cid)
        else:
            log.warning("fetching %s from %s failed: %s", cid, backend.name, exc)

    # -- the rest ---------------------------------------------------------

    async def has(self, cid: str) -> list[str]:
        """Names of the backends that report holding *cid* (ones that fail to say are skipped).

        Raises :class:`~fedstore.errors.InvalidCIDError` for a malformed *cid*.
        """
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        return [b.name for b in self._backends if await self._holds(b, cid)]

    async def health(self) -> dict[str, Health]:
        out: dict[str, Health] = {}
        for backend in self._backends:
            try:
                out[backend.name] = await backend.health()
            except Exception as exc:  # health() must not raise; be defensive anyway
                out[backend.name] = Health(reachable=False, detail=str(exc) or type(exc).__name__)
        return out

    async def aclose(self) -> None:
        for backend in self._backends:
            try:
                await backend.aclose()
            except Exception as exc:
                log.warning("closing backend %s failed: %s", backend.name, exc)

    async def __aenter__(self) -> BackendChain:
        if self._lifespans is not None:
            raise RuntimeError("this backend chain is already entered")
        stack = AsyncExitStack()
        try:
            for backend in self._backends:
                await stack.enter_async_context(backend.lifespan())
        except BaseException:
            try:
                await stack.aclose()
            finally:
                await self.aclose()
            raise
        self._lifespans = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._lifespans = self._lifespans, None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            await self.aclose()


async def _cid_of(source: Source, cid_version: int) -> str:
    """The CID of an ``add`` source, computed in a worker thread."""
    from fedstore.ipld.cid import cid_of_bytes, cid_of_file

    if isinstance(source, bytes | bytearray | memoryview):
        return await trio.to_thread.run_sync(cid_of_bytes, bytes(source), cid_version)
    return await trio.to_thread.run_sync(cid_of_file, os.fspath(source), cid_version)


class _MemorySink:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _PartFile:
    """A temporary ``.part`` file beside a fetch's destination. Blocking: use from a thread."""

    def __init__(self, name: str, fh: IO[bytes]) -> None:
        self.name = name
        self.fh = fh

    @classmethod
    def beside(cls, dest: Path) -> _PartFile:
        directory = dest.parent if str(dest.parent) else Path(".")
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=directory)
        return cls(name, os.fdopen(fd, "wb"))

    def commit(self, dest: Path) -> None:
        """Make the verified bytes *dest*, durably: fsync the file, rename, fsync the directory."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.name, dest)
        fsync_dir(dest.parent if str(dest.parent) else ".")

    def discard(self) -> None:
        self.fh.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


def _fetch_failure(cid: str, attempts: list[Attempt]) -> FedstoreError:
    """The error for a read every backend failed, classified by what the backends raised."""
    errors = [a.error for a in attempts if a.error is not None]

    def only(*kinds: type[FedstoreError]) -> bool:
        return all(isinstance(e, kinds) for e in errors)

    def some(kind: type[FedstoreError]) -> bool:
        return any(isinstance(e, kind) for e in errors)

    summary = summarize(attempts)
    if only(NotFoundError):
        return NotFoundError(f"no backend has {cid} ({summary})", cid=cid, attempts=attempts)
    if some(IntegrityError) and only(IntegrityError, NotFoundError):
        return IntegrityError(
            f"every copy of {cid} found was corrupt ({summary})", cid=cid, attempts=attempts
        )
    if some(SizeLimitError) and only(SizeLimitError, NotFoundError):
        return SizeLimitError(
            f"{cid} is larger than allowed ({summary})", cid=cid, attempts=attempts
        )
    return UnavailableError(f"could not fetch {cid} ({summary})", cid=cid, attempts=attempts)
