"""The ``filesystem`` backend: a content-addressed store in a local directory.

fedstore's embedded default. It needs no server, and several peers on one
machine can share one root as a stand-in for IPFS. Objects are whole files
named by their CID (the CID Kubo's ``ipfs add`` would give the same bytes)::

    <root>/objects/<last two chars of CID>/<CID>
    <root>/pins/<CID>           an empty marker: this object is pinned
    <root>/tmp/                 in-flight writes (same filesystem, so rename is atomic)

Writes hash while copying into a private temporary file, fsync it, then
``os.replace`` it into place, so concurrent writers of the same CID are safe
(both write identical bytes; the last rename wins) and a crash never leaves a
torn object under a CID name. Adding bytes that are already stored replaces
the stored object with the freshly hashed copy, so a put repairs an object
that was damaged on disk instead of reporting success over it. Every CID is
parsed before it becomes a path, so no name can escape the root. Reads are
verified by the core's backend chain, which rejects a damaged object.

Settings (declared in :attr:`FilesystemBackend.settings`): ``FEDSTORE_FS_ROOT``
(``[filesystem] root`` in fedstore.toml; default:
``$XDG_DATA_HOME/fedstore/objects``, i.e. ``~/.local/share/fedstore/objects``).
It always joins the default chain, after remote services and before the peers.

This plugin uses only fedstore's public API and can be copied into another
distribution as it is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Self

import trio

import fedstore
from fedstore.backends import (
    BackendContext,
    Detected,
    Health,
    Setting,
    Source,
    StorageBackend,
    StoredObject,
)
from fedstore.errors import NotFoundError, UnavailableError
from fedstore.ipld.cid import CidBuilder, DagParams, parse_cid

__all__ = ["FilesystemBackend", "default_root"]

_READ = 1024 * 1024
#: fetch() reads this much per worker-thread hop: each hop costs far more
#: than copying a few MiB from the page cache (4 MiB: a quarter of the hops
#: of 1 MiB, measured faster for 100 MB checkpoints; more buys nothing).
_FETCH_READ = 4 * 1024 * 1024

ROOT = Setting(
    "FEDSTORE_FS_ROOT",
    help="filesystem backend root; default $XDG_DATA_HOME/fedstore/objects",
    key="root",
    kind="path",
)
XDG_DATA_HOME = Setting(
    "XDG_DATA_HOME",
    help="base of the filesystem backend's default root (default ~/.local/share)",
    kind="path",
)


def default_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if ROOT.is_set(env):
        return Path(ROOT.text(env)).expanduser()
    data_home = XDG_DATA_HOME.text(env) or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "fedstore" / "objects"


class FilesystemBackend(StorageBackend):
    """Content-addressed objects in a directory (see the module docstring)."""

    name = "filesystem"
    settings = (ROOT, XDG_DATA_HOME)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        return cls(default_root(settings))

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected:
        """Always: the local directory is the embedded default (priority 100)."""
        return Detected(100, f"always ({default_root(settings)})")

    def __repr__(self) -> str:
        return f"<FilesystemBackend root={str(self.root)!r}>"

    # -- paths ----------------------------------------------------------

    def _object_path(self, cid: str) -> Path:
        # Only the canonical form of a parsed CID becomes a path: InvalidCIDError
        # for anything else, and " Qm...\n" or a base58 CIDv1 map to the same file.
        name = str(parse_cid(cid))
        return self._objects / name[-2:] / name

    def _ensure_dirs(self) -> None:
        for d in (self._objects, self._pins, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- contract ---------------------------------------------------------

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        try:
            cid, size = await trio.to_thread.run_sync(self._add_sync, source, cid_version)
        except OSError as exc:
            raise UnavailableError(
                f"filesystem backend cannot write under {self.root}: {exc.strerror or exc}",
                backend=self.name,
            ) from exc
        return StoredObject(cid=cid, size=size)

    def _add_sync(self, source: Source, cid_version: int) -> tuple[str, int]:
        self._ensure_dirs()
        builder = CidBuilder(DagParams(cid_version=cid_version))
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="add-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes | bytearray | memoryview):
                    builder.update(source)
                    out.write(source)
                    size = len(source)
                else:
                    size = 0
                    with open(source, "rb") as src:
                        while block := src.read(_READ):
                            builder.update(block)
                            out.write(block)
                            size += len(block)
                out.flush()
                os.fsync(out.fileno())
            cid = builder.finalize()
            final = self._object_path(cid)
            cid = final.name
            final.parent.mkdir(parents=True, exist_ok=True)
            # Always replace: these bytes were hashed to the CID as they were written,
            # while an object already there may have rotted (same size or not). Readers
            # holding the old file keep it; concurrent writers wrote identical bytes.
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            (self._pins / cid).touch()
            return cid, size
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        path = self._object_path(cid)
        try:
            fh = await trio.open_file(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"filesystem: {cid} is not in {self.root}", backend=self.name
            ) from None
        except OSError as exc:
            raise UnavailableError(
                f"filesystem: cannot read {cid}: {exc}", backend=self.name
            ) from exc
        async with fh:
            while True:
                try:
                    block = await fh.read(_FETCH_READ)
                except OSError as exc:
                    raise UnavailableError(
                        f"filesystem: read of {cid} failed: {exc}", backend=self.name
                    ) from exc
                if not block:
                    return
                yield block

    async def has(self, cid: str) -> bool:
        path = self._object_path(cid)
        return await trio.to_thread.run_sync(path.is_file)

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        path = self._object_path(cid)

        def _pin() -> int:
            size = path.stat().st_size
            self._ensure_dirs()
            (self._pins / path.name).touch()
            return size

        try:
            size = await trio.to_thread.run_sync(_pin)
        except FileNotFoundError:
            raise NotFoundError(
                f"filesystem: cannot pin {cid}: not stored", backend=self.name
            ) from None
        return StoredObject(cid=cid, size=size)

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        """Remove the pin marker. The object stays: other peers may share this root."""
        marker = self._pins / self._object_path(cid).name

        def _unpin() -> None:
            try:
                marker.unlink()
            except FileNotFoundError:
                pass

        await trio.to_thread.run_sync(_unpin)

    async def is_pinned(self, cid: str) -> bool:
        marker = self._pins / self._object_path(cid).name
        return await trio.to_thread.run_sync(marker.exists)

    async def health(self) -> Health:
        def _probe() -> Health:
            try:
                self._ensure_dirs()
                fd, probe = tempfile.mkstemp(dir=self._tmp, prefix="health-")
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                return Health(reachable=False, detail=f"{self.root}: {exc.strerror or exc}")
            return Health(
                reachable=True,
                authenticated=True,
                version=f"fedstore {fedstore.__version__}",
                detail=str(self.root),
            )

        return await trio.to_thread.run_sync(_probe)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
