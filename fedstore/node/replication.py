"""Save with fallback, and re-pin what failed: the catalog's pin rows kept honest.

:func:`replicate` stores a checkpoint file through a :class:`BackendChain`,
trying its backends in order (e.g. ``pinata, kubo, filesystem``) until one
accepts it, and records one pin row per backend it tried: ``pinned`` (with
the backend's handle, e.g. Pinata's file id) or ``failed`` (with the error
text, which never contains secrets: backends redact them). Backends after
the one that accepted are not tried and get no row. A row is set to
``pending`` just before each attempt, so a crash leaves a visible trace.

:func:`retry_failed_pins` walks the ``failed`` rows and stores each CID again
on its backend once that backend is back: from the local checkpoint file
when the catalog knows one (or a *source* callback gives one), else fetched
(verified) from another backend of the chain into a temporary file; as a last
resort it asks the backend to pin the CID from the network. Rows flip to
``pinned`` or stay ``failed`` with the new error.

The catalog may be a :class:`fedstore.catalog.Catalog` (its blocking calls
then run in worker threads) or a :class:`fedstore.catalog.AsyncCatalog`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fedstore.backends.base import StorageBackend, StoredObject
from fedstore.backends.chain import BackendChain
from fedstore.backends.streaming import same_cid
from fedstore.errors import CIDMismatchError, FedstoreError, UnavailableError
from fedstore.ipld.cid import parse_cid

if TYPE_CHECKING:
    from fedstore.catalog import AsyncCatalog, Catalog, PinRecord

__all__ = ["PinOutcome", "ReplicationResult", "replicate", "retry_failed_pins"]

log = logging.getLogger(__name__)

#: Longest error text stored in a pin row.
MAX_ERROR_TEXT = 1000

SourceFn = Callable[[str], Awaitable[Path | None]]


@dataclass(frozen=True, slots=True)
class PinOutcome:
    """What happened to one CID on one backend."""

    cid: str
    backend: str
    state: str  # "pinned" | "failed" | "skipped"
    backend_ref: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicationResult:
    cid: str
    stored_on: str
    backend_ref: str | None
    outcomes: list[PinOutcome]


class _Pins:
    """The three catalog calls replication needs, awaitable for either catalog flavour."""

    def __init__(self, catalog: Catalog | AsyncCatalog) -> None:
        self._catalog: Any = catalog
        self._async = hasattr(catalog, "sync")

    async def _call(self, name: str, *args: Any) -> Any:
        method = getattr(self._catalog, name)
        if self._async:
            return await method(*args)
        return await trio.to_thread.run_sync(lambda: method(*args))

    async def set(
        self,
        cid: str,
        backend: str,
        state: str,
        backend_ref: str | None = None,
        error: str | None = None,
    ) -> None:
        await self._call("set_pin", cid, backend, state, backend_ref, error)

    async def failed(self) -> list[PinRecord]:
        rows: list[PinRecord] = await self._call("pins", "failed")
        return rows

    async def local_path(self, cid: str) -> Path | None:
        """The local checkpoint file holding *cid*, if the catalog knows one that exists."""
        sync = self._catalog.sync if self._async else self._catalog
        base = Path(sync.path).parent

        def find() -> Path | None:
            for record in sync.checkpoints_with_cid(cid):
                path: Path = base / record.path
                if record.status == "ok" and path.is_file():
                    return path
            return None

        try:
            found: Path | None = await trio.to_thread.run_sync(find)
            return found
        except (FedstoreError, OSError, AttributeError) as exc:
            log.debug("no local file for %s: %s", cid, exc)
            return None


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, FedstoreError):
        text = f"{type(exc).__name__}: {text}"
    return text[:MAX_ERROR_TEXT]


async def _store_on(
    backend: StorageBackend,
    path: Path,
    cid: str,
    *,
    cid_version: int,
    name: str | None,
    labels: Mapping[str, str] | None,
) -> StoredObject:
    stored = await backend.add(path, cid_version=cid_version, name=name, labels=labels)
    if not same_cid(stored.cid, cid):
        raise CIDMismatchError(
            f"{backend.name} stored the data as {stored.cid}, but the checkpoint's CID is {cid}",
            backend=backend.name,
        )
    return stored


async def replicate(
    source_path: str | os.PathLike[str],
    cid: str,
    chain: BackendChain,
    catalog: Catalog | AsyncCatalog,
    labels: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
) -> ReplicationResult:
    """Store *source_path* (whose CID fedstore computed as *cid*) on the first backend
    of *chain* that accepts it, recording a pin row for every backend tried.

    Raises :class:`~fedstore.errors.UnavailableError` naming every backend's
    failure when none accepted it (the failed rows are recorded first, so
    ``fedstore pins retry`` can finish the job later).
    """
    version = parse_cid(cid).version
    path = Path(source_path)
    pins = _Pins(catalog)
    outcomes: list[PinOutcome] = []
    for backend in chain.backends:
        await pins.set(cid, backend.name, "pending")
        try:
            stored = await _store_on(
                backend, path, cid, cid_version=version, name=name, labels=labels
            )
        except Exception as exc:  # any backend failure is recorded, then the next one tried
            text = _error_text(exc)
            if isinstance(exc, FedstoreError):
                log.warning("%s did not store %s: %s", backend.name, cid, text)
            else:
                log.exception("%s failed unexpectedly storing %s", backend.name, cid)
            await pins.set(cid, backend.name, "failed", error=text)
            outcomes.append(PinOutcome(cid, backend.name, "failed", error=text))
            continue
        await pins.set(cid, backend.name, "pinned", backend_ref=stored.backend_ref)
        outcomes.append(PinOutcome(cid, backend.name, "pinned", backend_ref=stored.backend_ref))
        if len(outcomes) > 1:
            log.info(
                "%s stored on %s after %d failed backend(s)", cid, backend.name, len(outcomes) - 1
            )
        await keep_local_copies(chain, path, cid, catalog, skip=backend.name)
        return ReplicationResult(cid, backend.name, stored.backend_ref, outcomes)
    summary = "; ".join(f"{o.backend}: {o.error}" for o in outcomes)
    raise UnavailableError(f"no backend accepted {cid} ({summary})")


async def keep_local_copies(
    chain: BackendChain,
    source_path: str | os.PathLike[str],
    cid: str,
    catalog: Catalog | AsyncCatalog | None = None,
    *,
    skip: str | None = None,
) -> list[PinOutcome]:
    """Store *source_path* on every backend of *chain* that keeps a local copy.

    Backends with ``keeps_local_copy`` (bitswap) serve the node's own copies
    to its peers, so they must hold every checkpoint the node holds, whichever
    backend took the write or served the fetch. Failures are logged and
    recorded, never raised: the checkpoint is already safely stored elsewhere.
    """
    version = parse_cid(cid).version
    pins = _Pins(catalog) if catalog is not None else None
    outcomes: list[PinOutcome] = []
    for backend in chain.backends:
        if not backend.keeps_local_copy or backend.name == skip:
            continue
        try:
            stored = await _store_on(
                backend, Path(source_path), cid, cid_version=version, name=None, labels=None
            )
        except Exception as exc:  # a local copy is best effort
            text = _error_text(exc)
            log.warning("%s could not keep a copy of %s: %s", backend.name, cid, text)
            outcomes.append(PinOutcome(cid, backend.name, "failed", error=text))
            if pins is not None:
                await pins.set(cid, backend.name, "failed", error=text)
            continue
        outcomes.append(PinOutcome(cid, backend.name, "pinned", backend_ref=stored.backend_ref))
        if pins is not None:
            await pins.set(cid, backend.name, "pinned", backend_ref=stored.backend_ref)
    return outcomes


async def retry_failed_pins(
    chain: BackendChain,
    catalog: Catalog | AsyncCatalog,
    *,
    backends: Iterable[str] | None = None,
    source: SourceFn | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[PinOutcome]:
    """Store again every CID whose pin row is ``failed`` on a backend of *chain*.

    *backends* limits the retry to those names. Rows of backends not in the
    chain are reported as ``skipped`` and left unchanged. Returns one outcome
    per row considered, in catalog order.
    """
    wanted = set(backends) if backends is not None else None
    pins = _Pins(catalog)
    outcomes: list[PinOutcome] = []
    rows = await pins.failed()
    by_name = {b.name: b for b in chain.backends}
    for row in rows:
        if wanted is not None and row.backend not in wanted:
            continue
        backend = by_name.get(row.backend)
        if backend is None:
            outcomes.append(
                PinOutcome(row.cid, row.backend, "skipped", error="backend not in the chain")
            )
            continue
        try:
            stored = await _repin(chain, backend, row.cid, pins, source, labels)
        except Exception as exc:
            text = _error_text(exc)
            log.warning("re-pinning %s on %s failed: %s", row.cid, row.backend, text)
            await pins.set(row.cid, row.backend, "failed", error=text)
            outcomes.append(PinOutcome(row.cid, row.backend, "failed", error=text))
            continue
        await pins.set(row.cid, row.backend, "pinned", backend_ref=stored.backend_ref)
        outcomes.append(PinOutcome(row.cid, row.backend, "pinned", backend_ref=stored.backend_ref))
    return outcomes


async def _repin(
    chain: BackendChain,
    backend: StorageBackend,
    cid: str,
    pins: _Pins,
    source: SourceFn | None,
    labels: Mapping[str, str] | None,
) -> StoredObject:
    version = parse_cid(cid).version
    path = await source(cid) if source is not None else None
    if path is None:
        path = await pins.local_path(cid)
    if path is not None:
        return await _store_on(backend, path, cid, cid_version=version, name=None, labels=labels)
    others = [b for b in chain.backends if b is not backend]
    if others:
        tmpdir = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="fedstore-repin-"))
        try:
            fetched = Path(tmpdir) / "object"
            try:
                # Not closed here: the backends belong to *chain*.
                await BackendChain(others).fetch_to_file(cid, fetched)
            except FedstoreError as exc:
                log.info("no other backend could provide %s: %s", cid, exc)
            else:
                return await _store_on(
                    backend, fetched, cid, cid_version=version, name=None, labels=labels
                )
        finally:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    # Last resort: ask the backend to obtain the CID from the network itself.
    stored = await backend.pin(cid, labels=labels)
    if not await backend.has(cid):
        raise UnavailableError(
            f"no local copy of {cid} and no other backend has it; asked {backend.name} to pin "
            "it from the network (still queued, will check again on the next retry)",
            backend=backend.name,
        )
    return stored
