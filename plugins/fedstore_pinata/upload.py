"""Uploading a checkpoint to Pinata: v3 CAR or file, v3 resumable (TUS), legacy pinFileToIPFS.

Which request (decision)
------------------------
* v3 up to ``tus_threshold`` with ``PINATA_UPLOAD_FORMAT=car`` (the default):
  fedstore builds the file's DAG itself (Kubo's ``ipfs add`` DAG for the
  requested CID version) and uploads it as a CARv1 with ``car=true``
  (:mod:`fedstore_pinata.car_upload`). Pinata keeps the CAR's root, so its
  CID is fedstore's by construction, whatever chunker Pinata would have used.
* v3 with ``PINATA_UPLOAD_FORMAT=file``: the raw file with ``cid_version``;
  Pinata chunks it and the answered CID is compared with fedstore's.
* v3 above ``tus_threshold`` (resumable, :mod:`fedstore_pinata.tus`) and
  legacy ``pinFileToIPFS`` always send the raw file with the CID version:
  ``car=true`` is documented for the v3 multipart upload (and signed upload
  URLs) only, not for TUS metadata or the legacy API, so those paths rely on
  the answered-CID check alone.

Whatever the path, the caller compares the CID Pinata answers with fedstore's
(:class:`Uploaded` carries both) and treats a different root as a mismatch.
File uploads stream the bytes through a :class:`~fedstore.backends.streaming.CidTap`
so fedstore's CID costs no extra read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import trio

from fedstore.backends import Source
from fedstore.backends.streaming import CidTap
from fedstore.errors import BackendError
from fedstore.ipld.cid import DagParams
from fedstore_pinata.car_upload import CarPlan, plan_car
from fedstore_pinata.client import PinataClient
from fedstore_pinata.files import keyvalues, list_files
from fedstore_pinata.tus import tus_upload

__all__ = ["Uploaded", "upload"]

log = logging.getLogger("fedstore.backends.pinata")

_LEGACY_MAX_KEYVALUES = 10


@dataclass(frozen=True, slots=True)
class Uploaded:
    """The outcome of one upload: Pinata's CID, its file id (v3) and fedstore's CID."""

    remote_cid: str
    file_id: str | None
    local_cid: str


async def upload(
    client: PinataClient,
    source: Source,
    *,
    size: int,
    cid_version: int,
    filename: str,
    labels: Mapping[str, str] | None,
) -> Uploaded:
    """Upload ``source`` (``size`` bytes) publicly and say which CID each side computed.

    The legacy API when configured; else v3, resumable above the config's
    ``tus_threshold``, as a CAR or the file below it (``upload_format``).
    """
    config = client.config
    if config.mode != "legacy" and size <= config.tus_threshold and config.upload_format == "car":
        plan = await trio.to_thread.run_sync(plan_car, source, DagParams.kubo(cid_version))
        remote, ref = await _add_v3_car(client, source, plan, filename, labels)
        return Uploaded(remote, ref, plan.cid)
    tap = CidTap(cid_version)
    if config.mode == "legacy":
        remote, ref = await _add_legacy(client, source, cid_version, filename, labels, tap)
    elif size > config.tus_threshold:
        remote, ref = await _add_tus(client, source, size, cid_version, filename, labels, tap)
    else:
        remote, ref = await _add_v3(client, source, cid_version, filename, labels, tap)
    return Uploaded(remote, ref, await tap.cid(source, size))


def _v3_fields(
    client: PinataClient, filename: str, labels: Mapping[str, str] | None, extra: tuple[str, str]
) -> list[tuple[str, str]]:
    fields = [
        ("network", "public"),
        ("name", filename),
        extra,
        ("keyvalues", json.dumps(keyvalues(labels))),
    ]
    if client.config.group_id:
        fields.append(("group_id", client.config.group_id))
    return fields


def _v3_answer(
    client: PinataClient, response: httpx.Response, action: str
) -> tuple[str, str | None]:
    data = client.json(response, action).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("cid"), str):
        raise BackendError("pinata: upload answered without data.cid", backend="pinata")
    file_id = data.get("id")
    if data.get("network") not in (None, "public"):
        shown = client.redact(repr(data.get("network"))[:200])[:60]
        log.warning("pinata: upload landed on network %s, not public", shown)
    return data["cid"], str(file_id) if file_id else None


async def _add_v3_car(
    client: PinataClient,
    source: Source,
    plan: CarPlan,
    filename: str,
    labels: Mapping[str, str] | None,
) -> tuple[str, str | None]:
    fields = _v3_fields(client, filename, labels, ("car", "true"))
    action = "upload"
    url = f"{client.config.upload_url}/v3/files"
    response = await client.post_car(url, action, fields, f"{filename}.car", source, plan)
    return _v3_answer(client, response, action)


async def _add_v3(
    client: PinataClient,
    source: Source,
    cid_version: int,
    filename: str,
    labels: Mapping[str, str] | None,
    tap: CidTap,
) -> tuple[str, str | None]:
    fields = _v3_fields(client, filename, labels, ("cid_version", f"v{cid_version}"))
    action = "upload"
    url = f"{client.config.upload_url}/v3/files"
    response = await client.post_multipart(url, action, fields, filename, source, tap)
    return _v3_answer(client, response, action)


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
