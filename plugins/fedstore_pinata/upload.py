"""Uploading a checkpoint to Pinata: v3 multipart, v3 resumable (TUS) or legacy pinFileToIPFS.

Every path streams the bytes through a :class:`~fedstore.backends.streaming.CidTap`
so the backend can compare Pinata's CID with fedstore's, and answers
``(cid Pinata reports, file id or None)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fedstore.backends import Source
from fedstore.backends.streaming import CidTap
from fedstore.errors import BackendError
from fedstore_pinata.client import PinataClient
from fedstore_pinata.files import keyvalues, list_files
from fedstore_pinata.tus import tus_upload

__all__ = ["upload"]

log = logging.getLogger("fedstore.backends.pinata")

_LEGACY_MAX_KEYVALUES = 10


async def upload(
    client: PinataClient,
    source: Source,
    *,
    size: int,
    cid_version: int,
    filename: str,
    labels: Mapping[str, str] | None,
    tap: CidTap,
) -> tuple[str, str | None]:
    """Upload ``source`` (``size`` bytes) publicly: ``(Pinata's CID, file id or None)``.

    The legacy API when configured; else v3, resumable above the config's
    ``tus_threshold``.
    """
    if client.config.mode == "legacy":
        return await _add_legacy(client, source, cid_version, filename, labels, tap)
    if size > client.config.tus_threshold:
        return await _add_tus(client, source, size, cid_version, filename, labels, tap)
    return await _add_v3(client, source, cid_version, filename, labels, tap)


async def _add_v3(
    client: PinataClient,
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
        ("keyvalues", json.dumps(keyvalues(labels))),
    ]
    if client.config.group_id:
        fields.append(("group_id", client.config.group_id))
    action = "upload"
    url = f"{client.config.upload_url}/v3/files"
    response = await client.post_multipart(url, action, fields, filename, source, tap)
    data = client.json(response, action).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("cid"), str):
        raise BackendError("pinata: upload answered without data.cid", backend="pinata")
    file_id = data.get("id")
    if data.get("network") not in (None, "public"):
        log.warning("pinata: upload landed on network %r, not public", data.get("network"))
    return data["cid"], str(file_id) if file_id else None


async def _add_tus(
    client: PinataClient,
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
        "keyvalues": json.dumps(keyvalues(labels)),
    }
    if client.config.group_id:
        metadata["group_id"] = client.config.group_id
    cid = await tus_upload(
        client.http,
        endpoint=f"{client.config.upload_url}/v3/files",
        source=source,
        size=size,
        metadata=metadata,
        chunk_size=client.config.tus_chunk,
        policy=client.retry,
        redact=client.redact,
        classify=client.classify("resumable upload"),
        tap=tap,
        limiter=client.limiter,
    )
    ids = [f.get("id") async for f in list_files(client, cid=cid, max_items=1)]
    return cid, str(ids[0]) if ids and ids[0] else None


async def _add_legacy(
    client: PinataClient,
    source: Source,
    cid_version: int,
    filename: str,
    labels: Mapping[str, str] | None,
    tap: CidTap,
) -> tuple[str, str | None]:
    kv = keyvalues(labels)
    if len(kv) > _LEGACY_MAX_KEYVALUES:
        log.warning("pinata legacy API keeps at most 10 keyvalues; dropping the rest")
        kv = dict(list(kv.items())[:_LEGACY_MAX_KEYVALUES])
    fields = [
        ("pinataOptions", json.dumps({"cidVersion": cid_version, "wrapWithDirectory": False})),
        ("pinataMetadata", json.dumps({"name": filename, "keyvalues": kv})),
    ]
    action = "pinFileToIPFS"
    url = f"{client.config.api_url}/pinning/pinFileToIPFS"
    response = await client.post_multipart(url, action, fields, filename, source, tap)
    doc = client.json(response, action)
    if not isinstance(doc.get("IpfsHash"), str):
        raise BackendError("pinata: pinFileToIPFS answered without IpfsHash", backend="pinata")
    return doc["IpfsHash"], None
