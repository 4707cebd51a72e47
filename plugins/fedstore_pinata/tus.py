"""Resumable (TUS 1.0) uploads to Pinata's v3 upload endpoint.

Flow (as Pinata's SDK, ``src/core/functions/uploads/file.ts``):

1. ``POST {upload}/v3/files`` with ``Upload-Length`` and ``Upload-Metadata``
   (``key base64(value)`` pairs: filename, filetype, network, keyvalues,
   cid_version, group_id) → 201 with the upload URL in ``Location``.
2. ``PATCH <Location>`` per chunk with ``Upload-Offset`` and
   ``Content-Type: application/offset+octet-stream``; the answer carries the
   new ``Upload-Offset``. Each chunk is streamed from the file.
3. The last answer carries ``upload-cid``.

After a failed chunk the server's offset is asked with ``HEAD <Location>``
and the upload resumes from there; retries follow the backend's
:class:`~fedstore.backends.http.RetryPolicy`, and the budget is restored
whenever a chunk gets through.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Mapping
from urllib.parse import urljoin

import httpx

from fedstore.backends.http import Classifier, RateLimiter, RetryPolicy, send, with_retries
from fedstore.backends.streaming import CidTap, iter_source
from fedstore.errors import BackendError, RateLimitedError, UnavailableError

__all__ = ["TUS_VERSION", "encode_metadata", "tus_upload"]

log = logging.getLogger("fedstore.backends.pinata")

TUS_VERSION = "1.0.0"


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """TUS ``Upload-Metadata``: ``key base64(value)`` pairs joined by commas."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
    )


def _offset(response: httpx.Response, size: int) -> int:
    raw = response.headers.get("upload-offset")
    try:
        value = int(raw) if raw is not None else -1
    except ValueError:
        value = -1
    if not 0 <= value <= size:
        # quoted only when it is a number: a header may echo anything, a credential too
        if raw is None:
            shown = "(none)"
        elif raw.isascii() and raw.isdigit() and len(raw) <= 20:
            shown = raw
        else:
            shown = "(not a number)"
        raise BackendError(
            f"pinata: resumable upload answered an invalid Upload-Offset {shown}", backend="pinata"
        )
    return value


async def tus_upload(
    client: httpx.AsyncClient,
    *,
    endpoint: str,
    source: bytes | os.PathLike[str],
    size: int,
    metadata: Mapping[str, str],
    chunk_size: int,
    policy: RetryPolicy,
    redact: Callable[[str], str],
    classify: Classifier,
    tap: CidTap | None = None,
    limiter: RateLimiter | None = None,
) -> str:
    """Upload *source* with TUS and return the CID Pinata reports (``upload-cid``)."""
    common = {"Tus-Resumable": TUS_VERSION}

    async def _send(request: httpx.Request, action: str) -> httpx.Response:
        return await send(
            client,
            request,
            backend="pinata",
            action=action,
            redact=redact,
            classify=classify,
            limiter=limiter,
        )

    async def create() -> httpx.Response:
        request = client.build_request(
            "POST",
            endpoint,
            headers={
                **common,
                "Upload-Length": str(size),
                "Upload-Metadata": encode_metadata(metadata),
            },
        )
        return await _send(request, "start resumable upload")

    created = await with_retries(
        create, policy=policy, backend="pinata", action="start resumable upload"
    )
    location = created.headers.get("location")
    if not location:
        raise BackendError(
            "pinata: resumable upload was accepted without a Location header", backend="pinata"
        )
    url = urljoin(endpoint, location)
    offset = 0
    cid: str | None = created.headers.get("upload-cid")
    failures = 0
    while offset < size:
        length = min(chunk_size, size - offset)
        body = iter_source(source, offset=offset, length=length, on_chunk=tap)
        request = client.build_request(
            "PATCH",
            url,
            content=body,
            headers={
                **common,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length),
            },
        )
        try:
            response = await _send(request, f"upload bytes {offset}+{length}")
        except UnavailableError as exc:
            failures += 1
            if failures >= policy.attempts:
                raise
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
            if retry_after is not None and retry_after > policy.max_retry_after:
                raise
            wait = policy.delay(failures, retry_after)
            log.warning(
                "pinata: resumable upload chunk at %d failed (%s); resuming in %.1fs",
                offset,
                exc,
                wait,
            )
            await policy.sleep(wait)
            head = client.build_request("HEAD", url, headers=common)
            try:
                probe = await _send(head, "resume upload")
            except UnavailableError:
                continue  # try the same chunk again; counts against the budget
            offset = _offset(probe, size)
            continue
        new_offset = _offset(response, size)
        if new_offset <= offset:
            raise BackendError(
                f"pinata: resumable upload made no progress at byte {offset}", backend="pinata"
            )
        offset = new_offset
        failures = 0
        cid = response.headers.get("upload-cid") or cid
    if not cid:
        raise BackendError(
            "pinata: resumable upload finished but Pinata did not report the CID "
            "(no upload-cid header)",
            backend="pinata",
        )
    return cid
