"""The Pinata account's files: listing (paginated), pinning by CID and deleting.

v3 lists ``GET /v3/files/public`` with cursor pagination (``pageToken`` /
``next_page_token``), pins with ``POST /v3/files/public/pin_by_cid`` and
deletes by file id (``DELETE /v3/files/public/{id}``), resolving CID → ids by
listing. The legacy API lists ``GET /data/pinList`` (offset pagination), pins
with ``POST /pinning/pinByHash`` and deletes by CID
(``DELETE /pinning/unpin/{cid}``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from fedstore.errors import BackendError, NotFoundError
from fedstore_pinata.client import PinataClient

__all__ = ["FILE_ID", "delete_files", "keyvalues", "list_files", "pin_by_cid"]

#: what a Pinata file id looks like (anything else is never put into a URL path)
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_PAGES = 1000


def keyvalues(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels as Pinata keyvalues: strings only, keys and values capped in length."""
    return {str(k)[:64]: str(v)[:256] for k, v in (labels or {}).items()}


async def list_files(
    client: PinataClient,
    *,
    cid: str | None = None,
    keyvalues: Mapping[str, str] | None = None,
    page_size: int = 100,
    max_items: int | None = None,
) -> AsyncGenerator[dict[str, Any]]:
    """Yield the account's public files (v3) or pins (legacy), following pagination.

    v3 items are Pinata's ``FileListItem`` (``id``, ``cid``, ``name``,
    ``keyvalues``...); legacy rows are mapped to the same keys. At most
    1000 pages are read; a repeated page token ends the listing.
    """
    yielded = 0
    legacy = client.config.mode == "legacy"
    offset, token, seen_tokens = 0, None, set[str]()
    for _ in range(_MAX_PAGES):
        if legacy:
            items = await _legacy_page(client, cid, page_size, offset)
            offset += len(items)
            last = len(items) < page_size
        else:
            items, token = await _v3_page(client, cid, keyvalues, page_size, token)
            last = not items or not token or token in seen_tokens
            if token:
                seen_tokens.add(token)
        for item in items:
            if cid and item.get("cid") != cid:
                continue
            yield item
            yielded += 1
            if max_items is not None and yielded >= max_items:
                return
        if last:
            return


async def _legacy_page(
    client: PinataClient, cid: str | None, page_size: int, offset: int
) -> list[dict[str, Any]]:
    """One page of ``/data/pinList``, rows mapped to the v3 item keys."""
    params = {"status": "pinned", "pageLimit": str(page_size), "pageOffset": str(offset)}
    if cid:
        params["hashContains"] = cid
    response = await client.call(
        "GET", f"{client.config.api_url}/data/pinList", action="list pins", params=params
    )
    items = []
    for row in client.json(response, "list pins").get("rows") or []:
        meta = row.get("metadata") or {}
        items.append(
            {
                "id": row.get("id"),
                "cid": row.get("ipfs_pin_hash"),
                "name": meta.get("name"),
                "keyvalues": meta.get("keyvalues") or {},
                "size": row.get("size"),
            }
        )
    return items


async def _v3_page(
    client: PinataClient,
    cid: str | None,
    keyvalues: Mapping[str, str] | None,
    page_size: int,
    token: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``/v3/files/public`` and the next page's token (None: last page)."""
    params = {"limit": str(page_size)}
    if cid:
        params["cid"] = cid
    for k, v in (keyvalues or {}).items():
        params[f"keyvalues[{k}]"] = v
    if token:
        params["pageToken"] = token
    response = await client.call(
        "GET", f"{client.v3}/files/public", action="list files", params=params
    )
    data = client.json(response, "list files").get("data") or {}
    return list(data.get("files") or []), data.get("next_page_token") or None


async def pin_by_cid(
    client: PinataClient, cid: str, *, name: str, labels: Mapping[str, str] | None
) -> None:
    """Ask Pinata to pin ``cid`` (it then retrieves the content from the IPFS network)."""
    if client.config.mode == "legacy":
        await client.call(
            "POST",
            f"{client.config.api_url}/pinning/pinByHash",
            action=f"pinByHash {cid}",
            json_body={
                "hashToPin": cid,
                "pinataMetadata": {"name": name, "keyvalues": keyvalues(labels)},
            },
        )
        return
    body: dict[str, object] = {"cid": cid, "name": name, "keyvalues": keyvalues(labels)}
    if client.config.group_id:
        body["group_id"] = client.config.group_id
    await client.call(
        "POST", f"{client.v3}/files/public/pin_by_cid", action=f"pin {cid}", json_body=body
    )


async def delete_files(client: PinataClient, cid: str, *, backend_ref: str | None) -> None:
    """Delete ``cid``: by file id (v3; ids found by listing when none is given) or by CID
    (legacy). Already absent is success."""
    if client.config.mode == "legacy":
        try:
            await client.call(
                "DELETE", f"{client.config.api_url}/pinning/unpin/{cid}", action=f"unpin {cid}"
            )
        except NotFoundError:
            return
        except BackendError as exc:
            if "not pinned" in str(exc).lower() or "HAS_NOT_PINNED" in str(exc):
                return
            raise
        return
    if backend_ref:
        if not FILE_ID.match(backend_ref):
            raise BackendError(f"pinata: {backend_ref!r} is not a Pinata file id", backend="pinata")
        ids = [backend_ref]
    else:
        ids = [str(f["id"]) async for f in list_files(client, cid=cid) if f.get("id")]
    for file_id in ids:
        if not FILE_ID.match(file_id):
            continue
        try:
            await client.call(
                "DELETE", f"{client.v3}/files/public/{file_id}", action=f"delete file {file_id}"
            )
        except NotFoundError:
            continue
