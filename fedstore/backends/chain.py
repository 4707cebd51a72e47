"""The backend chain: ordered fallback across storage backends, verify on read.

Policy lives here, not in the backends:

* **Writes** go to the first backend that accepts them, in the configured
  order (e.g. ``pinata, kubo, filesystem``). The CID is computed locally
  first; a backend that answers with another CID counts as a failure
  (:class:`~fedstore.errors.CIDMismatchError`). Every attempt is reported in
  :class:`ChainAddResult.attempts` so callers can record pin state per backend.
* **Reads** try each backend in order. Fetched bytes are streamed through a
  :class:`~fedstore.ipld.cid.CidVerifier`; data whose CID does not match is
  discarded, logged and the next backend is tried. No unverified byte ever
  reaches a caller: ``fetch_to_file`` writes to a temporary file and renames
  it into place only after verification; ``fetch_bytes`` returns only
  verified bytes.
* Hashing and disk writes of fetched data run in worker threads in batches, so
  a large fetch never blocks the trio event loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import trio

from fedstore.backends.base import Health, Source, StorageBackend, StoredObject
from fedstore.errors import (
    BackendError,
    CIDMismatchError,
    FedstoreError,
    IntegrityError,
    NotConfiguredError,
    NotFoundError,
    SizeLimitError,
    UnavailableError,
)

__all__ = ["Attempt", "BackendChain", "ChainAddResult", "FetchResult"]

log = logging.getLogger(__name__)

#: Fetched data is hashed and written in batches of about this many bytes.
_BATCH = 4 * 1024 * 1024
#: Default cap for :meth:`BackendChain.fetch_bytes` (in memory).
DEFAULT_MAX_FETCH_BYTES = 2 * 1024**3

ProgressFn = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend's outcome for one operation."""

    backend: str
    ok: bool
    error: str | None = None
    backend_ref: str | None = None
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class ChainAddResult:
    cid: str
    size: int
    stored_on: str
    backend_ref: str | None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FetchResult:
    cid: str
    size: int
    backend: str
    attempts: list[Attempt] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class BackendChain:
    """An ordered list of backends with fallback and verification.

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

    # -- writes ---------------------------------------------------------

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        expected_cid: str | None = None,
    ) -> ChainAddResult:
        """Store *source* on the first backend that accepts it.

        *expected_cid* is the CID fedstore computed locally; when omitted it is
        computed here (in a worker thread). Raises
        :class:`~fedstore.errors.UnavailableError` listing every backend's
        failure when none accepts; its ``attempts`` attribute holds them.
        """
        from fedstore.ipld.cid import cid_of_bytes, cid_of_file

        if expected_cid is None:
            if isinstance(source, bytes | bytearray | memoryview):
                data = bytes(source)
                expected_cid = await trio.to_thread.run_sync(cid_of_bytes, data, cid_version)
            else:
                path = os.fspath(source)
                expected_cid = await trio.to_thread.run_sync(cid_of_file, path, cid_version)
        attempts: list[Attempt] = []
        for backend in self._backends:
            try:
                stored = await backend.add(
                    source, cid_version=cid_version, name=name, labels=labels
                )
                if stored.cid != expected_cid:
                    raise CIDMismatchError(
                        f"{backend.name} stored the data as {stored.cid}, "
                        f"but fedstore computes {expected_cid}",
                        backend=backend.name,
                    )
            except FedstoreError as exc:
                log.warning("backend %s did not store %s: %s", backend.name, expected_cid, exc)
                attempts.append(
                    Attempt(backend.name, False, _describe(exc), error_type=type(exc).__name__)
                )
                continue
            attempts.append(Attempt(backend.name, True, backend_ref=stored.backend_ref))
            return ChainAddResult(
                cid=expected_cid,
                size=stored.size,
                stored_on=backend.name,
                backend_ref=stored.backend_ref,
                attempts=attempts,
            )
        summary = "; ".join(f"{a.backend}: {a.error}" for a in attempts)
        err = UnavailableError(f"no backend accepted {expected_cid} ({summary})")
        err.attempts = attempts  # type: ignore[attr-defined]
        raise err

    async def add_to(
        self,
        backend_name: str,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store *source* on one named backend of the chain (used to re-pin)."""
        return await self.get(backend_name).add(
            source, cid_version=cid_version, name=name, labels=labels
        )

    def get(self, name: str) -> StorageBackend:
        for b in self._backends:
            if b.name == name:
                return b
        raise NotConfiguredError(
            f"backend {name!r} is not in the chain ({', '.join(self.names)})", backend=name
        )

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

        Tries each backend in order. Raises :class:`NotFoundError` when no
        backend has it, :class:`IntegrityError` when every copy found was
        corrupt, else :class:`UnavailableError`.
        """
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        dest_path = Path(dest)
        dest_dir = dest_path.parent if str(dest_path.parent) else Path(".")
        attempts: list[Attempt] = []
        for backend in self._backends:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{dest_path.name}.", suffix=".part", dir=dest_dir
            )
            fh = os.fdopen(fd, "wb")
            try:
                size = await self._stream_verified(backend, cid, fh, max_size, progress)
                await trio.to_thread.run_sync(_fsync_close, fh)
                await trio.to_thread.run_sync(os.replace, tmp_name, dest_path)
            except (FedstoreError, OSError) as exc:
                fh.close()
                _unlink_quietly(tmp_name)
                self._log_fetch_failure(backend, cid, exc)
                attempts.append(
                    Attempt(backend.name, False, _describe(exc), error_type=type(exc).__name__)
                )
                continue
            except BaseException:
                fh.close()
                _unlink_quietly(tmp_name)
                raise
            attempts.append(Attempt(backend.name, True))
            return FetchResult(cid=cid, size=size, backend=backend.name, attempts=attempts)
        raise _fetch_failure(cid, attempts)

    async def fetch_bytes(self, cid: str, *, max_size: int = DEFAULT_MAX_FETCH_BYTES) -> bytes:
        """Fetch *cid* into memory, verified. Refuses more than *max_size* bytes."""
        from fedstore.ipld.cid import parse_cid

        parse_cid(cid)
        attempts: list[Attempt] = []
        for backend in self._backends:
            sink = _MemorySink()
            try:
                await self._stream_verified(backend, cid, sink, max_size, None)
            except FedstoreError as exc:
                self._log_fetch_failure(backend, cid, exc)
                attempts.append(
                    Attempt(backend.name, False, _describe(exc), error_type=type(exc).__name__)
                )
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
            async for chunk in backend.fetch(cid):
                if not chunk:
                    continue
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise SizeLimitError(
                        f"{backend.name} sent more than {max_size} bytes for {cid}"
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
        except FedstoreError:
            raise
        except Exception as exc:  # a plugin leaked a foreign exception: translate it
            raise UnavailableError(
                f"{backend.name} failed while sending {cid}: {type(exc).__name__}: {exc}",
                backend=backend.name,
            ) from exc
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
        """Names of the backends that report holding *cid* (unreachable ones are skipped)."""
        holders = []
        for backend in self._backends:
            try:
                if await backend.has(cid):
                    holders.append(backend.name)
            except BackendError as exc:
                log.info("%s: has(%s) failed: %s", backend.name, cid, exc)
        return holders

    async def health(self) -> dict[str, Health]:
        out: dict[str, Health] = {}
        for backend in self._backends:
            try:
                out[backend.name] = await backend.health()
            except Exception as exc:  # health() must not raise; be defensive anyway
                out[backend.name] = Health(reachable=False, detail=_describe(exc))
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


class _MemorySink:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _fsync_close(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fetch_failure(cid: str, attempts: list[Attempt]) -> FedstoreError:
    summary = "; ".join(f"{a.backend}: {a.error}" for a in attempts)
    types = {a.error_type for a in attempts}
    if types == {"NotFoundError"}:
        return NotFoundError(f"no backend has {cid} ({summary})")
    if "IntegrityError" in types and types <= {"IntegrityError", "NotFoundError"}:
        return IntegrityError(f"every copy of {cid} found was corrupt ({summary})")
    if "SizeLimitError" in types and types <= {"SizeLimitError", "NotFoundError"}:
        return SizeLimitError(f"{cid} is larger than allowed ({summary})")
    return UnavailableError(f"could not fetch {cid} ({summary})")
