"""Pin rows kept honest: an observer of the backend chain's writes, and the repair of what failed.

The write policy (which backends get a checkpoint) is the chain's alone
(:class:`fedstore.backends.BackendChain`); this module only records it and
finishes what did not happen:

* :class:`PinRecorder` is a :class:`~fedstore.backends.chain.WriteObserver`:
  for every backend the chain tries it sets the catalog's pin row to
  ``pending`` just before the attempt (so a crash leaves a visible trace),
  then ``pinned`` (with the backend's handle, e.g. Pinata's file id) or
  ``failed`` (with the error text, which never contains secrets: backends
  redact them). :func:`replicate` and :func:`keep_local_copies` are the
  chain's two writes with a recorder attached.
* :func:`complete_local_copies` (run by a node when it starts) gives every
  ``keeps_local_copy`` backend (bitswap) the local checkpoints it lacks, e.g.
  a copy a SIGKILL interrupted, so the node never advertises a round its
  peers cannot fetch from it.
* :func:`retry_failed_pins` (``fedstore pins retry``) stores again every CID
  whose row is ``failed``, or ``pending`` (an attempt a crash interrupted), or
  missing (a local checkpoint with no row at all, or none for a backend that
  keeps local copies). The copy comes from the local checkpoint file when
  the catalog knows one (or a *source* callback gives one), else fetched
  (verified) from another backend of the chain; as a last resort the backend
  is asked to pin the CID from the network.

The catalog may be a :class:`fedstore.catalog.Catalog` or a
:class:`fedstore.catalog.AsyncCatalog`; its blocking calls run in worker
threads either way.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio

from fedstore.backends.chain import (
    Attempt,
    BackendChain,
    ChainAddResult,
    WriteObserver,
    at_boundary,
)
from fedstore.errors import FedstoreError, UnavailableError
from fedstore.ipld.cid import parse_cid

if TYPE_CHECKING:
    from fedstore.backends.base import StorageBackend
    from fedstore.catalog import AsyncCatalog, Catalog, PinRecord

__all__ = [
    "PinOutcome",
    "PinRecorder",
    "complete_local_copies",
    "keep_local_copies",
    "replicate",
    "retry_failed_pins",
]

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

    @classmethod
    def of(cls, cid: str, attempt: Attempt) -> PinOutcome:
        if attempt.ok:
            return cls(cid, attempt.backend, "pinned", backend_ref=attempt.backend_ref)
        return cls(cid, attempt.backend, "failed", error=_error_text(attempt))


def _error_text(attempt: Attempt) -> str:
    return attempt.describe()[:MAX_ERROR_TEXT]


@dataclass(frozen=True, slots=True)
class _Local:
    """A local checkpoint file."""

    round: int
    cid: str
    path: Path


#: SQL conditions on a checkpoint ``c`` for :meth:`_Catalog.checkpoints_lacking`.
_LACKING = {
    # no ``pinned`` row on :backend (none, or one left pending or failed)
    "pinned": "NOT EXISTS (SELECT 1 FROM pins AS p WHERE p.cid = c.cid "
    "AND p.backend = :backend AND p.state = 'pinned')",
    # no row at all on :backend
    "row": "NOT EXISTS (SELECT 1 FROM pins AS p WHERE p.cid = c.cid AND p.backend = :backend)",
    # no row on any backend: never stored through the chain
    "any row": "NOT EXISTS (SELECT 1 FROM pins AS p WHERE p.cid = c.cid)",
}


class _Catalog:
    """The catalog calls this module needs, in worker threads, for either catalog flavour."""

    def __init__(self, catalog: Catalog | AsyncCatalog) -> None:
        # AsyncCatalog wraps a Catalog as ``.sync``; both are used through the plain one
        self.sync: Catalog = catalog.sync if hasattr(catalog, "sync") else catalog

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args))

    async def set_pin(
        self,
        cid: str,
        backend: str,
        state: str,
        backend_ref: str | None = None,
        error: str | None = None,
    ) -> None:
        await self.call(self.sync.set_pin, cid, backend, state, backend_ref, error)

    async def pins(self, state: str | None = None) -> list[PinRecord]:
        rows: list[PinRecord] = await self.call(self.sync.pins, state)
        return rows

    async def checkpoints_lacking(
        self, missing: str, backend: str | None = None, *, limit: int | None = None
    ) -> list[_Local]:
        """Local checkpoints (state ``ok``, file present) lacking a pin row, newest first.

        *missing* is one of :data:`_LACKING`; *limit* restricts the search to
        the newest *limit* checkpoints. One indexed SQL query over the
        documented catalog schema (docs/CATALOG.md), so a catalog of 100,000
        rounds costs milliseconds, not a load of every row.
        """
        sync = self.sync
        newest = "SELECT * FROM checkpoints WHERE status = 'ok' ORDER BY round DESC"
        params: dict[str, object] = {"backend": backend}
        if limit is not None:
            newest += " LIMIT :limit"
            params["limit"] = limit
        sql = (
            f"SELECT c.round, c.cid, c.path FROM ({newest}) AS c "
            f"WHERE {_LACKING[missing]} ORDER BY c.round DESC"
        )

        def find() -> list[_Local]:
            base = Path(sync.path).parent
            _, rows = sync.read_only_query(sql, params)
            found = [_Local(cast(int, r), str(c), base / str(p)) for r, c, p in rows]
            return [loc for loc in found if loc.path.is_file()]

        out: list[_Local] = await trio.to_thread.run_sync(find)
        return out

    async def local_path(self, cid: str) -> Path | None:
        """The local checkpoint file holding *cid*, if the catalog knows one that exists."""
        sync = self.sync

        def find() -> Path | None:
            base = Path(sync.path).parent
            for record in sync.checkpoints_with_cid(cid):
                path: Path = base / record.path
                if record.status == "ok" and path.is_file():
                    return path
            return None

        try:
            found: Path | None = await trio.to_thread.run_sync(find)
            return found
        except (FedstoreError, OSError) as exc:
            log.debug("no local file for %s: %s", cid, exc)
            return None


class PinRecorder(WriteObserver):
    """Records each backend attempt of a chain write as the CID's pin row on that backend."""

    def __init__(self, catalog: Catalog | AsyncCatalog) -> None:
        self._catalog = _Catalog(catalog)

    async def attempt_started(self, cid: str, backend: str) -> None:
        await self._catalog.set_pin(cid, backend, "pending")

    async def attempt_finished(self, cid: str, attempt: Attempt) -> None:
        if attempt.ok:
            await self._catalog.set_pin(cid, attempt.backend, "pinned", attempt.backend_ref)
        else:
            await self._catalog.set_pin(cid, attempt.backend, "failed", error=_error_text(attempt))


async def replicate(
    source_path: str | os.PathLike[str],
    cid: str,
    chain: BackendChain,
    catalog: Catalog | AsyncCatalog,
    labels: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
) -> ChainAddResult:
    """Store *source_path* (whose CID fedstore computed as *cid*) by the chain's write
    policy, recording a pin row for every backend tried.

    Raises :class:`~fedstore.errors.UnavailableError` naming every backend's
    failure when none accepted it (the failed rows are recorded first, so
    ``fedstore pins retry`` can finish the job later).
    """
    return await chain.add(
        Path(source_path),
        cid_version=parse_cid(cid).version,
        name=name,
        labels=labels,
        expected_cid=cid,
        observer=PinRecorder(catalog),
    )


async def keep_local_copies(
    chain: BackendChain,
    source_path: str | os.PathLike[str],
    cid: str,
    catalog: Catalog | AsyncCatalog | None = None,
    *,
    missing_only: bool = False,
) -> list[PinOutcome]:
    """Give every ``keeps_local_copy`` backend of *chain* a copy of *source_path*.

    See :meth:`BackendChain.keep_local_copies`; with a *catalog*, each attempt
    is recorded as a pin row. Failures are returned, never raised.
    """
    observer = PinRecorder(catalog) if catalog is not None else None
    attempts = await chain.keep_local_copies(
        Path(source_path), cid, observer=observer, missing_only=missing_only
    )
    return [PinOutcome.of(cid, a) for a in attempts]


async def complete_local_copies(
    chain: BackendChain, catalog: Catalog | AsyncCatalog, *, limit: int | None = None
) -> list[PinOutcome]:
    """Copy every local checkpoint into the ``keeps_local_copy`` backends that lack it.

    A checkpoint is a candidate for a backend when its pin row there is not
    ``pinned`` (missing, ``pending`` after a crash, or ``failed``); the backend
    is written to only if ``has`` says it lacks the object. Newest rounds
    first; *limit* caps how many checkpoints are considered. Failures are
    recorded and returned, never raised.
    """
    local_names = {b.name for b in chain.backends if b.keeps_local_copy}
    if not local_names:
        return []
    cat = _Catalog(catalog)
    lacking: dict[str, tuple[_Local, set[str]]] = {}  # cid -> checkpoint, backends lacking it
    for name in sorted(local_names):
        for loc in await cat.checkpoints_lacking("pinned", name, limit=limit):
            lacking.setdefault(loc.cid, (loc, set()))[1].add(name)
    todo = sorted(lacking.values(), key=lambda item: -item[0].round)
    outcomes: list[PinOutcome] = []
    for loc, names in todo:
        attempts = await chain.keep_local_copies(
            loc.path,
            loc.cid,
            observer=PinRecorder(catalog),
            missing_only=True,
            skip=sorted(local_names - names),
        )
        outcomes.extend(PinOutcome.of(loc.cid, a) for a in attempts)
    copied = sum(o.state == "pinned" for o in outcomes)
    if outcomes:
        log.info("completed %d local cop%s of checkpoints", copied, "y" if copied == 1 else "ies")
    return outcomes


async def retry_failed_pins(
    chain: BackendChain,
    catalog: Catalog | AsyncCatalog,
    *,
    backends: Iterable[str] | None = None,
    source: SourceFn | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[PinOutcome]:
    """Store again every CID whose pin on a backend of *chain* is failed, pending or missing.

    * a ``failed`` or ``pending`` row (pending: an attempt a crash
      interrupted) is retried on its backend;
    * a local checkpoint with no pin row on a ``keeps_local_copy`` backend of
      the chain is stored there;
    * a local checkpoint with no pin row at all (the node stopped between
      the local save and the chain's write) is stored by the chain's write
      policy.

    *backends* limits the retry to those names. Rows of backends not in the
    chain are reported as ``skipped`` and left unchanged. Returns one outcome
    per backend attempt (and skipped row).
    """
    wanted = set(backends) if backends is not None else None
    chosen = chain.subset(lambda b: wanted is None or b.name in wanted)
    if chosen is None:
        return []
    cat = _Catalog(catalog)
    recorder = PinRecorder(catalog)
    outcomes: list[PinOutcome] = []

    by_name = {b.name: b for b in chosen.backends}
    for row in await cat.pins("failed") + await cat.pins("pending"):
        if wanted is not None and row.backend not in wanted:
            continue
        backend = by_name.get(row.backend)
        if backend is None:
            outcomes.append(
                PinOutcome(row.cid, row.backend, "skipped", error="backend not in the chain")
            )
            continue
        attempt = await _repin(chain, backend, row.cid, cat, recorder, source, labels)
        outcomes.append(PinOutcome.of(row.cid, attempt))

    # missing rows: never stored at all, or never copied to a keep-local-copy backend
    for loc in await cat.checkpoints_lacking("any row"):
        log.info("%s (round %d) was never stored through the chain", loc.cid, loc.round)
        try:
            result = await chosen.add(
                loc.path,
                cid_version=parse_cid(loc.cid).version,
                name=f"round-{loc.round}",
                labels=labels,
                expected_cid=loc.cid,
                observer=recorder,
            )
            attempts = result.attempts
        except FedstoreError as exc:
            attempts = list(exc.attempts)
        outcomes.extend(PinOutcome.of(loc.cid, a) for a in attempts)
    for backend in chosen.backends:
        if not backend.keeps_local_copy:
            continue
        others = [b.name for b in chosen.backends if b is not backend]
        for loc in await cat.checkpoints_lacking("row", backend.name):
            for attempt in await chosen.keep_local_copies(
                loc.path, loc.cid, observer=recorder, skip=others
            ):
                outcomes.append(PinOutcome.of(loc.cid, attempt))
    return outcomes


async def _repin(
    chain: BackendChain,
    backend: StorageBackend,
    cid: str,
    cat: _Catalog,
    recorder: PinRecorder,
    source: SourceFn | None,
    labels: Mapping[str, str] | None,
) -> Attempt:
    """Store *cid* on *backend* again through the chain (recorded); the final attempt."""
    only = chain.subset(lambda b: b is backend)
    assert only is not None
    version = parse_cid(cid).version
    path = await source(cid) if source is not None else None
    if path is None:
        path = await cat.local_path(cid)
    if path is not None:
        return await _add_recorded(only, path, cid, version, labels, recorder)
    others = chain.subset(lambda b: b is not backend)
    if others is not None:
        tmpdir = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="fedstore-repin-"))
        try:
            fetched = Path(tmpdir) / "object"
            try:
                await others.fetch_to_file(cid, fetched)
            except FedstoreError as exc:
                log.info("no other backend could provide %s: %s", cid, exc)
            else:
                return await _add_recorded(only, fetched, cid, version, labels, recorder)
        finally:
            await trio.to_thread.run_sync(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    # Last resort: ask the backend to obtain the CID from the network itself.
    await recorder.attempt_started(cid, backend.name)
    try:
        stored = await backend.pin(cid, labels=labels)
        if not await backend.has(cid):
            raise UnavailableError(
                f"no local copy of {cid} and no other backend has it; asked {backend.name} to "
                "pin it from the network (still queued, will check again on the next retry)",
                backend=backend.name,
                cid=cid,
            )
        attempt = Attempt(backend.name, backend_ref=stored.backend_ref)
    except Exception as exc:  # recorded like any other attempt
        attempt = Attempt(backend.name, at_boundary(exc, backend.name, cid, "pinning"))
    await recorder.attempt_finished(cid, attempt)
    return attempt


async def _add_recorded(
    only: BackendChain,
    path: Path,
    cid: str,
    version: int,
    labels: Mapping[str, str] | None,
    recorder: PinRecorder,
) -> Attempt:
    try:
        result = await only.add(
            path, cid_version=version, labels=labels, expected_cid=cid, observer=recorder
        )
    except FedstoreError as exc:
        return exc.attempts[-1] if exc.attempts else Attempt(only.names[0], exc)
    return result.attempts[-1]
