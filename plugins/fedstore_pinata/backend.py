"""PinataBackend: Pinata's pinning service as a fedstore backend.

CID identity (decision)
-----------------------
v3 uploads up to the TUS threshold send a CAR that fedstore built itself
(Kubo's DAG: 256 KiB chunks, balanced, raw leaves for v1) with ``car=true``,
so Pinata keeps fedstore's root CID by construction, whatever its own
chunker does (``PINATA_UPLOAD_FORMAT=file`` sends the raw file with
``cid_version`` instead). Resumable (TUS) and legacy uploads send the file
with ``cid_version``: ``car=true`` is not documented there (see
:mod:`fedstore_pinata.upload`). In every case the CID Pinata reports is
compared with fedstore's: a different root block raises
:class:`~fedstore.errors.CIDMismatchError` and the stray upload is deleted
(best effort), so a divergence is never silent and the chain moves on to the
next backend. The v0 and v1 spellings of one root block are the same content
and are accepted; fedstore records its own CID.

Requests
--------
* v3 (``PINATA_JWT``): ``POST {upload}/v3/files`` multipart with
  ``network=public`` (Pinata's default is private, which peers cannot fetch),
  ``name``, ``keyvalues`` (JSON of the labels: round, peer, model),
  ``car=true`` with the CAR as the ``file`` part (``<name>.car``,
  ``application/vnd.ipld.car``) or ``cid_version`` with the raw file, and
  optional ``group_id``; resumable TUS upload above
  ``tus_threshold`` (:mod:`fedstore_pinata.tus`). List with cursor pagination
  (``pageToken`` / ``next_page_token``); delete by file id
  (``DELETE /v3/files/public/{id}``), resolving CID → ids by listing.
* legacy (``PINATA_API_KEY`` + ``PINATA_API_SECRET``, or ``PINATA_MODE=legacy``):
  ``POST /pinning/pinFileToIPFS`` with ``pinataOptions``/``pinataMetadata`` as
  form parts, ``GET /data/pinList``, ``DELETE /pinning/unpin/{cid}``,
  ``POST /pinning/pinByHash``.
* Downloads: ``GET {PINATA_GATEWAY_URL}/ipfs/{cid}`` with
  ``x-pinata-gateway-token``; a broken stream resumes with ``Range``. Bytes
  are not verified here; the chain verifies them against the CID.

Secrets live in :class:`~fedstore.backends.http.Secret` objects, travel in an
httpx auth flow (never in URLs) and are redacted from every message.

Layout: this module holds the backend contract (CID check, gateway reads,
pins, health); the HTTP plumbing is :mod:`fedstore_pinata.client`, uploads
:mod:`fedstore_pinata.upload` (and :mod:`fedstore_pinata.tus`), the
account's files (list, pin by CID, delete) :mod:`fedstore_pinata.files`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self

import httpx

from fedstore.backends import (
    BackendContext,
    Detected,
    Health,
    Source,
    StorageBackend,
    StoredObject,
    aclosing_stream,
)
from fedstore.backends.http import RateLimiter, RetryPolicy
from fedstore.backends.streaming import (
    DEFAULT_CHUNK_SIZE,
    source_size,
    stream_download,
)
from fedstore.errors import (
    AuthError,
    BackendError,
    CIDMismatchError,
    ConfigError,
    IntegrityError,
    InvalidCIDError,
    NotConfiguredError,
    RateLimitedError,
    UnavailableError,
)
from fedstore.ipld.cid import parse_cid
from fedstore_pinata import files
from fedstore_pinata.client import PinataClient
from fedstore_pinata.config import SETTINGS, PinataConfig, credentials_reason
from fedstore_pinata.upload import upload

__all__ = ["PROBE_BLOB", "PinataBackend"]

log = logging.getLogger("fedstore.backends.pinata")

#: Tiny fixed blob the deep health check uploads, reads back and deletes.
PROBE_BLOB = b"fedstore pinata health probe v1\n"


class PinataBackend(StorageBackend):
    """Checkpoints pinned on Pinata (public IPFS network), read through a dedicated gateway."""

    name = "pinata"
    supports_pinning = True
    settings = SETTINGS

    def __init__(
        self,
        config: PinataConfig,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self._api = PinataClient(
            config,
            retry=self.retry,
            timeout=timeout,
            transport=transport,
            chunk_size=chunk_size,
            limiter=limiter,
        )

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        """From :data:`~fedstore_pinata.config.SETTINGS`; NotConfiguredError without credentials."""
        return cls(PinataConfig.from_env(settings), retry=RetryPolicy.from_env(settings))

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        """First in the default chain (priority 300) when Pinata credentials are set."""
        reason = credentials_reason(settings)
        return None if reason is None else Detected(300, reason)

    def __repr__(self) -> str:
        c = self.config
        gw = c.gateway_url or "none"
        return f"<PinataBackend mode={c.mode} api={c.api_url} gateway={gw} credentials=***>"

    # -- add ------------------------------------------------------------------------

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Upload and pin *source* publicly; compare Pinata's CID with fedstore's."""
        self._api.check_open()
        if cid_version not in (0, 1):
            raise ConfigError(f"cid_version must be 0 or 1, not {cid_version!r}")
        size = source_size(source)
        done = await upload(
            self._api,
            source,
            size=size,
            cid_version=cid_version,
            filename=(name or "checkpoint")[:200],
            labels=labels,
        )
        remote, ref, local = done.remote_cid, done.file_id, done.local_cid
        if not _same_root(remote, local):
            await self._delete_quietly(remote, ref)
            raise CIDMismatchError(
                f"Pinata stored the data as {remote}, but fedstore computes {local} "
                f"(cid_version={cid_version}); the stray upload was deleted",
                backend="pinata",
            )
        return StoredObject(cid=local, size=size, backend_ref=ref)

    def list_files(
        self,
        *,
        cid: str | None = None,
        keyvalues: Mapping[str, str] | None = None,
        page_size: int = 100,
        max_items: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The account's public files (v3) or pins (legacy); see :func:`files.list_files`."""
        return files.list_files(
            self._api, cid=cid, keyvalues=keyvalues, page_size=page_size, max_items=max_items
        )

    # -- contract: reads ------------------------------------------------------------

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        """Stream *cid* from the dedicated gateway (resuming with ``Range``)."""
        api = self._api
        api.check_open()
        parse_cid(cid)
        gateway = self.config.gateway_url
        if not gateway:
            raise NotConfiguredError(
                "pinata: downloads need a dedicated gateway: set PINATA_GATEWAY_URL "
                "(https://<name>.mypinata.cloud) and PINATA_GATEWAY_TOKEN if it is restricted",
                backend="pinata",
            )
        url = f"{gateway}/ipfs/{cid}"
        action = f"download {cid}"

        def make(_offset: int) -> httpx.Request:
            return api.http.build_request("GET", url)

        download = stream_download(
            api.http,
            make,
            backend="pinata",
            action=action,
            redact=api.redact,
            policy=self.retry,
            classify=api.classify(action, gateway=True),
            auth=api.gateway_auth,
            expected_length=_content_length,
            ranged=True,
        )
        async with aclosing_stream(download) as stream:  # the response is released at once
            async for chunk in stream:
                yield chunk

    async def has(self, cid: str) -> bool:
        """Whether the account has *cid* pinned (listing filtered by CID)."""
        parse_cid(cid)
        async with aclosing_stream(self.list_files(cid=cid, page_size=10, max_items=1)) as items:
            async for _ in items:
                return True
        return False

    # -- contract: pins -------------------------------------------------------------

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Keep *cid*: a no-op if already pinned, else a pin-by-CID request.

        Pinata then retrieves the content from the IPFS network in the
        background; ``backend_ref`` is the file id when already known.
        """
        parse_cid(cid)
        async with aclosing_stream(self.list_files(cid=cid, max_items=1)) as items:
            async for item in items:
                ref = item.get("id")
                return StoredObject(
                    cid=cid,
                    size=int(item.get("size") or -1),
                    backend_ref=str(ref) if ref else None,
                )
        await files.pin_by_cid(self._api, cid, name=(name or cid)[:200], labels=labels)
        return StoredObject(cid=cid, size=-1)

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        """Delete by file id (v3; ids resolved by listing when none is given) or by CID (legacy)."""
        parse_cid(cid)
        await files.delete_files(self._api, cid, backend_ref=backend_ref)

    async def _delete_quietly(self, cid: str, ref: str | None) -> None:
        try:
            await self.unpin(cid, backend_ref=ref)
        except Exception as exc:  # best effort: the caller raises the real error
            log.warning("pinata: could not delete stray upload %s: %s", cid, exc)

    # -- health -----------------------------------------------------------------------

    async def health(self, *, deep: bool = False) -> Health:
        """Prove the key can *read* (list one file); with ``deep=True`` also upload,
        read back through the gateway and delete :data:`PROBE_BLOB`.

        ``testAuthentication`` is not used: it answers 200 even for a key with no scopes.
        """
        once = RetryPolicy.none()
        mode = self.config.mode
        checks: list[str] = []
        try:
            if mode == "legacy":
                await self._api.call(
                    "GET",
                    f"{self.config.api_url}/data/pinList",
                    action="health: list pins",
                    params={"status": "pinned", "pageLimit": "1"},
                    policy=once,
                )
            else:
                await self._api.call(
                    "GET",
                    f"{self._api.v3}/files/public",
                    action="health: list files",
                    params={"limit": "1"},
                    policy=once,
                )
            checks.append("read ok")
            if deep:
                checks.extend(await self._deep_probe())
        except AuthError as exc:
            return Health(
                reachable=True, authenticated=False, version=f"{mode} API", detail=str(exc)
            )
        except (BackendError, IntegrityError) as exc:
            return Health(
                reachable=isinstance(exc, RateLimitedError)
                or not isinstance(exc, UnavailableError),
                authenticated=True if checks else None,
                version=f"{mode} API",
                detail="; ".join([*checks, str(exc)]),
            )
        gw = self.config.gateway_url
        checks.append(
            f"gateway {gw}" if gw else "no gateway (PINATA_GATEWAY_URL unset: reads go elsewhere)"
        )
        return Health(
            reachable=True,
            authenticated=True,
            version=f"{mode} API",
            detail="; ".join(checks),
            extra={"api": self.config.api_url, "gateway": gw or ""},
        )

    async def _deep_probe(self) -> list[str]:
        stored = await self.add(PROBE_BLOB, cid_version=1, name="fedstore-health-probe")
        out = ["upload ok"]
        try:
            if self.config.gateway_url:
                async with aclosing_stream(self.fetch(stored.cid)) as stream:
                    data = b"".join([c async for c in stream])
                if data != PROBE_BLOB:
                    raise IntegrityError("pinata gateway returned wrong bytes for the probe")
                out.append("gateway read ok")
        finally:
            await self.unpin(stored.cid, backend_ref=stored.backend_ref)
        return out

    async def aclose(self) -> None:
        await self._api.aclose()


def _same_root(remote: str, local: str) -> bool:
    """Whether Pinata's CID names fedstore's root block (in either CID version)."""
    try:
        return parse_cid(remote).same_block(parse_cid(local))
    except InvalidCIDError:
        return False


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
