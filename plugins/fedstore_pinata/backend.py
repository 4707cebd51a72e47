"""PinataBackend: Pinata's pinning service as a fedstore backend.

CID identity (decision)
-----------------------
fedstore uploads the checkpoint *file* with ``cid_version`` set (v0 or v1)
and compares the CID Pinata reports with the one fedstore computes while
sending the bytes (Kubo's DAG: 256 KiB chunks, balanced, raw leaves for v1;
Pinata's importer uses the same defaults). A different CID raises
:class:`~fedstore.errors.CIDMismatchError` and the stray upload is deleted
(best effort), so a divergence is never silent and the chain moves on to the
next backend. Uploading a locally built CAR (``car=true``) would make the CID
match by construction; it is not used because that option is recent and
undocumented for resumable uploads, and the check above already guarantees
that fedstore never records a CID it did not compute.

Requests
--------
* v3 (``PINATA_JWT``): ``POST {upload}/v3/files`` multipart with
  ``network=public`` (Pinata's default is private, which peers cannot fetch),
  ``name``, ``keyvalues`` (JSON of the labels: round, peer, model),
  ``cid_version`` and optional ``group_id``; resumable TUS upload above
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
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self

import httpx

from fedstore.backends import Health, Source, StorageBackend, StoredObject
from fedstore.backends.http import (
    HeaderAuth,
    RateLimiter,
    Redactor,
    RetryPolicy,
    default_timeout,
    send,
    with_retries,
)
from fedstore.backends.streaming import (
    DEFAULT_CHUNK_SIZE,
    CidTap,
    MultipartBody,
    same_cid,
    source_size,
    stream_download,
)
from fedstore.cid import parse_cid
from fedstore.errors import (
    AuthError,
    BackendError,
    CIDMismatchError,
    ConfigError,
    IntegrityError,
    NotConfiguredError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from fedstore_pinata.config import PinataConfig, pinata_classifier
from fedstore_pinata.tus import tus_upload

__all__ = ["PROBE_BLOB", "PinataBackend"]

log = logging.getLogger("fedstore.backends.pinata")

#: Tiny fixed blob the deep health check uploads, reads back and deletes.
PROBE_BLOB = b"fedstore pinata health probe v1\n"
_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_PAGES = 1000
_LEGACY_MAX_KEYVALUES = 10


def _keyvalues(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels as Pinata keyvalues: strings only, keys and values capped in length."""
    return {str(k)[:64]: str(v)[:256] for k, v in (labels or {}).items()}


class PinataBackend(StorageBackend):
    """Checkpoints pinned on Pinata (public IPFS network), read through a dedicated gateway."""

    name = "pinata"
    supports_pinning = True

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
        self._chunk_size = chunk_size
        self._redact = Redactor(config.secrets())
        if limiter is None and config.rate_limit:
            limiter = RateLimiter(config.rate_limit, sleep=self.retry.sleep)
        self._limiter = limiter
        self._gateway_auth = HeaderAuth(
            {"x-pinata-gateway-token": config.gateway_token} if config.gateway_token else {}
        )
        self._client = httpx.AsyncClient(
            auth=HeaderAuth(config.api_headers()),
            timeout=timeout or default_timeout(read=300.0),
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            headers={"User-Agent": "fedstore-pinata", "Source": "fedstore"},
            follow_redirects=False,
        )
        self._closed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        config = PinataConfig.from_env(env)
        try:
            retry = RetryPolicy.from_env(env)
        except ConfigError as exc:
            raise NotConfiguredError(f"pinata: {exc}", backend="pinata") from exc
        return cls(config, retry=retry)

    def __repr__(self) -> str:
        c = self.config
        gw = c.gateway_url or "none"
        return f"<PinataBackend mode={c.mode} api={c.api_url} gateway={gw} credentials=***>"

    # -- plumbing -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("pinata: backend is closed", backend="pinata")

    async def _call(
        self,
        method: str,
        url: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        json_body: object | None = None,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        self._check_open()

        async def attempt() -> httpx.Response:
            request = self._client.build_request(
                method,
                url,
                params=params,
                content=json.dumps(json_body).encode() if json_body is not None else None,
                headers={"Content-Type": "application/json"} if json_body is not None else None,
            )
            return await send(
                self._client,
                request,
                backend="pinata",
                action=action,
                redact=self._redact,
                classify=pinata_classifier(self.config, action),
                limiter=self._limiter,
            )

        return await with_retries(
            attempt, policy=policy or self.retry, backend="pinata", action=action
        )

    def _json(self, response: httpx.Response, action: str) -> dict[str, Any]:
        try:
            doc = json.loads(response.text)
        except ValueError as exc:
            raise BackendError(
                f"pinata: {action}: answer is not JSON: {self._redact(response.text[:120])!r}",
                backend="pinata",
            ) from exc
        if not isinstance(doc, dict):
            raise BackendError(f"pinata: {action}: unexpected answer", backend="pinata")
        return doc

    @property
    def _v3(self) -> str:
        return f"{self.config.api_url}/v3"

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
        self._check_open()
        if cid_version not in (0, 1):
            raise ConfigError(f"cid_version must be 0 or 1, not {cid_version!r}")
        size = source_size(source)
        tap = CidTap(cid_version)
        filename = (name or "checkpoint")[:200]
        if self.config.mode == "legacy":
            remote, ref = await self._add_legacy(source, cid_version, filename, labels, tap)
        elif size > self.config.tus_threshold:
            remote, ref = await self._add_tus(source, size, cid_version, filename, labels, tap)
        else:
            remote, ref = await self._add_v3(source, cid_version, filename, labels, tap)
        local = await tap.cid(source, size)
        if not same_cid(remote, local):
            await self._delete_quietly(remote, ref)
            raise CIDMismatchError(
                f"Pinata stored the data as {remote}, but fedstore computes {local} "
                f"(cid_version={cid_version}); the stray upload was deleted",
                backend="pinata",
            )
        return StoredObject(cid=local, size=size, backend_ref=ref)

    async def _add_v3(
        self,
        source: Source,
        cid_version: int,
        filename: str,
        labels: Mapping[str, str] | None,
        tap: CidTap,
    ) -> tuple[str, str | None]:
        fields = [
            ("network", "public"),
            ("name", filename),
            ("cid_version", f"v{cid_version}"),
            ("keyvalues", json.dumps(_keyvalues(labels))),
        ]
        if self.config.group_id:
            fields.append(("group_id", self.config.group_id))
        action = "upload"
        url = f"{self.config.upload_url}/v3/files"
        response = await self._post_multipart(url, action, fields, filename, source, tap)
        data = self._json(response, action).get("data")
        if not isinstance(data, dict) or not isinstance(data.get("cid"), str):
            raise BackendError("pinata: upload answered without data.cid", backend="pinata")
        file_id = data.get("id")
        if data.get("network") not in (None, "public"):
            log.warning("pinata: upload landed on network %r, not public", data.get("network"))
        return data["cid"], str(file_id) if file_id else None

    async def _post_multipart(
        self,
        url: str,
        action: str,
        fields: list[tuple[str, str]],
        filename: str,
        source: Source,
        tap: CidTap,
    ) -> httpx.Response:
        """POST a streamed multipart upload (fields, then the file), with retries."""

        async def attempt() -> httpx.Response:
            body = MultipartBody(
                fields,
                file_field="file",
                filename=filename,
                source=source,
                chunk_size=self._chunk_size,
                on_chunk=tap,
            )
            request = self._client.build_request("POST", url, content=body, headers=body.headers())
            return await send(
                self._client,
                request,
                backend="pinata",
                action=action,
                redact=self._redact,
                classify=pinata_classifier(self.config, action),
                limiter=self._limiter,
            )

        return await with_retries(attempt, policy=self.retry, backend="pinata", action=action)

    async def _add_tus(
        self,
        source: Source,
        size: int,
        cid_version: int,
        filename: str,
        labels: Mapping[str, str] | None,
        tap: CidTap,
    ) -> tuple[str, str | None]:
        metadata = {
            "filename": filename,
            "filetype": "application/octet-stream",
            "network": "public",
            "cid_version": f"v{cid_version}",
            "keyvalues": json.dumps(_keyvalues(labels)),
        }
        if self.config.group_id:
            metadata["group_id"] = self.config.group_id
        cid = await tus_upload(
            self._client,
            endpoint=f"{self.config.upload_url}/v3/files",
            source=source,
            size=size,
            metadata=metadata,
            chunk_size=self.config.tus_chunk,
            policy=self.retry,
            redact=self._redact,
            classify=pinata_classifier(self.config, "resumable upload"),
            tap=tap,
            limiter=self._limiter,
        )
        ids = [f.get("id") async for f in self.list_files(cid=cid, max_items=1)]
        return cid, str(ids[0]) if ids and ids[0] else None

    async def _add_legacy(
        self,
        source: Source,
        cid_version: int,
        filename: str,
        labels: Mapping[str, str] | None,
        tap: CidTap,
    ) -> tuple[str, str | None]:
        keyvalues = _keyvalues(labels)
        if len(keyvalues) > _LEGACY_MAX_KEYVALUES:
            log.warning("pinata legacy API keeps at most 10 keyvalues; dropping the rest")
            keyvalues = dict(list(keyvalues.items())[:_LEGACY_MAX_KEYVALUES])
        fields = [
            ("pinataOptions", json.dumps({"cidVersion": cid_version, "wrapWithDirectory": False})),
            ("pinataMetadata", json.dumps({"name": filename, "keyvalues": keyvalues})),
        ]
        action = "pinFileToIPFS"
        url = f"{self.config.api_url}/pinning/pinFileToIPFS"
        response = await self._post_multipart(url, action, fields, filename, source, tap)
        doc = self._json(response, action)
        if not isinstance(doc.get("IpfsHash"), str):
            raise BackendError("pinata: pinFileToIPFS answered without IpfsHash", backend="pinata")
        return doc["IpfsHash"], None

    # -- listing --------------------------------------------------------------------

    async def list_files(
        self,
        *,
        cid: str | None = None,
        keyvalues: Mapping[str, str] | None = None,
        page_size: int = 100,
        max_items: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the account's public files (v3) or pins (legacy), following pagination.

        v3 items are Pinata's ``FileListItem`` (``id``, ``cid``, ``name``,
        ``keyvalues``...); legacy rows are mapped to the same keys.
        """
        yielded = 0
        if self.config.mode == "legacy":
            offset = 0
            for _ in range(_MAX_PAGES):
                params = {
                    "status": "pinned",
                    "pageLimit": str(page_size),
                    "pageOffset": str(offset),
                }
                if cid:
                    params["hashContains"] = cid
                doc = self._json(
                    await self._call(
                        "GET",
                        f"{self.config.api_url}/data/pinList",
                        action="list pins",
                        params=params,
                    ),
                    "list pins",
                )
                rows = doc.get("rows") or []
                for row in rows:
                    if cid and row.get("ipfs_pin_hash") != cid:
                        continue
                    meta = row.get("metadata") or {}
                    yield {
                        "id": row.get("id"),
                        "cid": row.get("ipfs_pin_hash"),
                        "name": meta.get("name"),
                        "keyvalues": meta.get("keyvalues") or {},
                        "size": row.get("size"),
                    }
                    yielded += 1
                    if max_items is not None and yielded >= max_items:
                        return
                if len(rows) < page_size:
                    return
                offset += len(rows)
            return
        token: str | None = None
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            params = {"limit": str(page_size)}
            if cid:
                params["cid"] = cid
            for k, v in (keyvalues or {}).items():
                params[f"keyvalues[{k}]"] = v
            if token:
                params["pageToken"] = token
            doc = self._json(
                await self._call(
                    "GET", f"{self._v3}/files/public", action="list files", params=params
                ),
                "list files",
            )
            data = doc.get("data") or {}
            files = data.get("files") or []
            for item in files:
                if cid and item.get("cid") != cid:
                    continue
                yield item
                yielded += 1
                if max_items is not None and yielded >= max_items:
                    return
            token = data.get("next_page_token") or None
            if not files or not token or token in seen_tokens:
                return
            seen_tokens.add(token)

    # -- contract: reads ------------------------------------------------------------

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        """Stream *cid* from the dedicated gateway (resuming with ``Range``)."""
        self._check_open()
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
            return self._client.build_request("GET", url)

        async for chunk in stream_download(
            self._client,
            make,
            backend="pinata",
            action=action,
            redact=self._redact,
            policy=self.retry,
            classify=pinata_classifier(self.config, action, gateway=True),
            auth=self._gateway_auth,
            expected_length=_content_length,
            ranged=True,
        ):
            yield chunk

    async def has(self, cid: str) -> bool:
        """Whether the account has *cid* pinned (listing filtered by CID)."""
        parse_cid(cid)
        async for _ in self.list_files(cid=cid, page_size=10, max_items=1):
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
        async for item in self.list_files(cid=cid, max_items=1):
            ref = item.get("id")
            return StoredObject(
                cid=cid, size=int(item.get("size") or -1), backend_ref=str(ref) if ref else None
            )
        meta_name = (name or cid)[:200]
        if self.config.mode == "legacy":
            await self._call(
                "POST",
                f"{self.config.api_url}/pinning/pinByHash",
                action=f"pinByHash {cid}",
                json_body={
                    "hashToPin": cid,
                    "pinataMetadata": {"name": meta_name, "keyvalues": _keyvalues(labels)},
                },
            )
        else:
            body: dict[str, object] = {
                "cid": cid,
                "name": meta_name,
                "keyvalues": _keyvalues(labels),
            }
            if self.config.group_id:
                body["group_id"] = self.config.group_id
            await self._call(
                "POST", f"{self._v3}/files/public/pin_by_cid", action=f"pin {cid}", json_body=body
            )
        return StoredObject(cid=cid, size=-1)

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        """Delete by file id (v3; ids resolved by listing when none is given) or by CID (legacy)."""
        parse_cid(cid)
        if self.config.mode == "legacy":
            try:
                await self._call(
                    "DELETE", f"{self.config.api_url}/pinning/unpin/{cid}", action=f"unpin {cid}"
                )
            except NotFoundError:
                return
            except BackendError as exc:
                if "not pinned" in str(exc).lower() or "HAS_NOT_PINNED" in str(exc):
                    return
                raise
            return
        if backend_ref:
            if not _FILE_ID.match(backend_ref):
                raise BackendError(
                    f"pinata: {backend_ref!r} is not a Pinata file id", backend="pinata"
                )
            ids = [backend_ref]
        else:
            ids = [str(f["id"]) async for f in self.list_files(cid=cid) if f.get("id")]
        for file_id in ids:
            if not _FILE_ID.match(file_id):
                continue
            try:
                await self._call(
                    "DELETE", f"{self._v3}/files/public/{file_id}", action=f"delete file {file_id}"
                )
            except NotFoundError:
                continue

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
                await self._call(
                    "GET",
                    f"{self.config.api_url}/data/pinList",
                    action="health: list pins",
                    params={"status": "pinned", "pageLimit": "1"},
                    policy=once,
                )
            else:
                await self._call(
                    "GET",
                    f"{self._v3}/files/public",
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
                data = b"".join([c async for c in self.fetch(stored.cid)])
                if data != PROBE_BLOB:
                    raise IntegrityError("pinata gateway returned wrong bytes for the probe")
                out.append("gateway read ok")
        finally:
            await self.unpin(stored.cid, backend_ref=stored.backend_ref)
        return out

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
