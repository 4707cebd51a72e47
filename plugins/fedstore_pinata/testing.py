"""An in-process fake Pinata (v3 API, uploads incl. TUS, legacy API, gateway) as an httpx transport.

Routes by path, so one transport serves every host the backend talks to:

* ``POST /v3/files`` multipart upload, or TUS creation when ``Upload-Length`` is set;
  ``PATCH``/``HEAD /v3/files/<upload id>`` for TUS chunks and offsets.
* ``GET /v3/files/public`` (``cid``, ``limit``, ``pageToken`` → ``next_page_token``),
  ``DELETE /v3/files/public/<id>``, ``POST /v3/files/public/pin_by_cid``.
* legacy ``POST /pinning/pinFileToIPFS``, ``GET /data/pinList``,
  ``DELETE /pinning/unpin/<cid>``, ``POST /pinning/pinByHash``.
* gateway ``GET /ipfs/<cid>`` (honours ``Range``; checks ``x-pinata-gateway-token``).

CIDs are computed with :mod:`fedstore.ipld.cid` from the requested ``cid_version``
(Pinata's default v1); a v3 upload with ``car=true`` carries a CARv1 that is
verified and unpacked with :mod:`fedstore.ipld.car` (the file is stored under the
CAR's root CID; a malformed or inconsistent CAR is a 400). Request bodies are
parsed as they stream; blobs may live in *blob_dir*. Knobs: ``down``,
``fail_next`` (answers/exceptions for the next requests), ``cid_override``,
``corrupt``, ``truncate``, ``drop_patch_after`` (break a TUS chunk after that
many bytes), ``echo`` (an error body built from the credential each request
carried, as a careless server or proxy answers: for redaction tests).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import trio

from fedstore.backends.streaming import iter_source, read_multipart
from fedstore.errors import FedstoreError, InvalidCIDError
from fedstore.ipld.car import CarReader, iter_car_verified
from fedstore.ipld.cid import CidBuilder, DagParams, parse_cid

__all__ = ["FakePinata"]

_STREAM_CHUNK = 256 * 1024


def _err(status: int, reason: str, details: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"reason": reason, "details": details}})


@dataclass
class _Upload:
    length: int
    metadata: dict[str, str]
    builder: CidBuilder
    offset: int = 0
    parts: list[bytes] = field(default_factory=list)
    path: Path | None = None


class FakePinata(httpx.AsyncBaseTransport):
    """A stateful fake of the Pinata services fedstore uses."""

    def __init__(
        self,
        *,
        jwt: str | None = "fake-jwt",
        api_key: str | None = None,
        api_secret: str | None = None,
        gateway_token: str | None = None,
        blob_dir: Path | None = None,
    ) -> None:
        self.jwt = jwt
        self.api_key = api_key
        self.api_secret = api_secret
        self.gateway_token = gateway_token
        self.blob_dir = blob_dir
        self.blobs: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}
        self.files: dict[str, dict[str, Any]] = {}  # id -> FileListItem
        self.uploads: dict[str, _Upload] = {}
        self.pin_requests: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.down = False
        self.fail_next: list[httpx.Response | Exception] = []
        #: Given the request's Authorization header, the raw body of an error answer
        #: (status ``echo_status``) sent instead of doing anything (redaction tests).
        self.echo: Callable[[str], str] | None = None
        self.echo_status = 400
        self.cid_override: str | None = None
        self.corrupt = False
        self.truncate: int | None = None
        self.drop_patch_after: int | None = None
        #: Largest file a CAR upload may unpack to (Pinata's upload limit is 25 GB).
        self.max_car_file_size = 25 * 10**9

    # -- helpers -------------------------------------------------------------------

    def _authorized(self, request: httpx.Request) -> bool:
        auth = request.headers.get("authorization")
        if self.jwt is not None and auth == f"Bearer {self.jwt}":
            return True
        return (
            self.api_key is not None
            and request.headers.get("pinata_api_key") == self.api_key
            and request.headers.get("pinata_secret_api_key") == self.api_secret
        )

    def _store(self, cid: str, size: int, name: str, keyvalues: dict[str, str]) -> dict[str, Any]:
        self.sizes[cid] = size
        for item in self.files.values():
            if item["cid"] == cid:
                return item
        item = {
            "id": str(uuid.uuid4()),
            "name": name,
            "cid": cid,
            "size": size,
            "number_of_files": 1,
            "mime_type": "application/octet-stream",
            "group_id": None,
            "keyvalues": keyvalues,
            "created_at": "2025-01-01T00:00:00.000Z",
            "network": "public",
        }
        self.files[item["id"]] = item
        return item

    def pinned_cids(self) -> set[str]:
        return {f["cid"] for f in self.files.values()}

    async def _new_sink(self) -> tuple[list[bytes], Any, Path | None]:
        if self.blob_dir is None:
            return [], None, None
        path = self.blob_dir / f".upload-{os.urandom(6).hex()}"
        return [], await trio.open_file(path, "wb"), path

    async def _finish(self, parts: list[bytes], fh: Any, path: Path | None, cid: str) -> None:
        if fh is not None:
            await fh.aclose()
        if path is not None:
            os.replace(path, path.with_name(cid))
        else:
            self.blobs[cid] = b"".join(parts)

    async def _discard(self, fh: Any, path: Path | None) -> None:
        if fh is not None:
            await fh.aclose()
        if path is not None:
            await trio.to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))

    # -- transport -------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        self.requests.append(request)
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        if self.echo is not None:
            body = self.echo(request.headers.get("authorization", ""))
            return httpx.Response(
                self.echo_status, text=body, headers={"content-type": "application/json"}
            )
        path, method = request.url.path, request.method
        if path.startswith("/ipfs/") and method == "GET":
            return await self._gateway(request, path[len("/ipfs/") :])
        if not self._authorized(request):
            if request.headers.get("authorization") is None and not request.headers.get(
                "pinata_api_key"
            ):
                return _err(401, "NO_AUTH", "No authentication provided")
            return _err(401, "INVALID_CREDENTIALS", "Invalid/expired credentials")
        if path == "/v3/files" and method == "POST":
            if "upload-length" in request.headers:
                return self._tus_create(request)
            return await self._upload_v3(request)
        if path.startswith("/v3/files/") and method in ("PATCH", "HEAD"):
            return await self._tus(request, path.rsplit("/", 1)[1])
        if path == "/v3/files/public" and method == "GET":
            return self._list(request)
        if path == "/v3/files/public/pin_by_cid" and method == "POST":
            return self._pin_by_cid(json.loads(await request.aread()))
        if path.startswith("/v3/files/public/") and method == "DELETE":
            file_id = path.rsplit("/", 1)[1]
            if self.files.pop(file_id, None) is None:
                return _err(404, "NOT_FOUND", "file not found")
            return httpx.Response(200, json={"data": None})
        if path == "/pinning/pinFileToIPFS" and method == "POST":
            return await self._upload_legacy(request)
        if path == "/data/pinList" and method == "GET":
            return self._pin_list(request)
        if path.startswith("/pinning/unpin/") and method == "DELETE":
            cid = path.rsplit("/", 1)[1]
            ids = [i for i, f in self.files.items() if f["cid"] == cid]
            if not ids:
                return _err(400, "CURRENT_USER_HAS_NOT_PINNED_CID", "not pinned")
            for i in ids:
                del self.files[i]
            return httpx.Response(200, text="OK")
        if path == "/pinning/pinByHash" and method == "POST":
            doc = json.loads(await request.aread())
            return self._pin_by_cid({"cid": doc["hashToPin"], "name": ""}, legacy=True)
        return httpx.Response(404, text="Not Found")

    # -- uploads ---------------------------------------------------------------------

    async def _read_upload(
        self, request: httpx.Request, version_of: Any, *, car_of: Any = None
    ) -> tuple[dict[str, str], str, int, str] | httpx.Response:
        """Parse a multipart upload; ``(fields, CID, file size, filename)`` or an error answer.

        The fields a decision depends on (``cid_version``, ``car``) must come
        before the file part, as fedstore sends them. With ``car_of(fields)``
        true the file part is a CARv1: it is spooled, verified and unpacked.
        """
        ctype = request.headers.get("content-type", "")
        if "boundary=" not in ctype:
            return _err(400, "INVALID_REQUEST", "multipart body required")
        boundary = ctype.split("boundary=", 1)[1].strip('"')
        fields: dict[str, str] = {}
        parts, fh, path = await self._new_sink()
        state: dict[str, Any] = {"builder": None, "size": 0, "filename": "", "car": None}

        async def on_field(name: str, value: str) -> None:
            fields[name] = value

        async def on_file(_name: str, filename: str, data: bytes) -> None:
            if state["builder"] is None and state["car"] is None:
                state["filename"] = filename
                if car_of is not None and car_of(fields):
                    spool = functools.partial(
                        tempfile.TemporaryFile, suffix=".car", dir=self.blob_dir
                    )
                    state["car"] = await trio.to_thread.run_sync(spool)
                else:
                    state["builder"] = CidBuilder(DagParams.kubo(version_of(fields)))
            if not data:
                return
            state["size"] += len(data)
            if state["car"] is not None:
                await trio.to_thread.run_sync(state["car"].write, data)
                return
            await trio.to_thread.run_sync(state["builder"].update, data)
            if fh is not None:
                await fh.write(data)
            else:
                parts.append(data)

        assert isinstance(request.stream, httpx.AsyncByteStream)
        try:
            try:
                await read_multipart(
                    request.stream.__aiter__(), boundary, on_field=on_field, on_file=on_file
                )
            except ValueError as exc:
                await self._discard(fh, path)
                return _err(400, "INVALID_REQUEST", str(exc))
            if state["car"] is not None:
                if fh is not None:
                    await fh.aclose()
                    fh = None
                try:
                    computed, size = await trio.to_thread.run_sync(
                        self._unpack_car, state["car"], path, parts
                    )
                except (FedstoreError, OSError) as exc:
                    await self._discard(None, path)
                    return _err(400, "INVALID_CAR", f"the CAR could not be imported: {exc}")
                state["size"] = size
            elif state["builder"] is None:
                await self._discard(fh, path)
                return _err(400, "INVALID_REQUEST", "file is required")
            else:
                computed = await trio.to_thread.run_sync(state["builder"].finalize)
        finally:
            if state["car"] is not None:
                state["car"].close()
        cid = self.cid_override or computed
        await self._finish(parts, fh, path, cid)
        return fields, cid, int(state["size"]), str(state["filename"])

    def _unpack_car(
        self, spool: IO[bytes], dest: Path | None, parts: list[bytes]
    ) -> tuple[str, int]:
        """Verify the CAR in ``spool`` and write its file to ``dest`` (or ``parts``).

        Answers ``(root CID as the CAR spells it, file size)``. Blocking.
        """
        spool.seek(0)
        root = CarReader(spool).root
        spool.seek(0)
        size = 0
        pieces = iter_car_verified(
            spool,
            expected_root=root,
            max_size=self.max_car_file_size,
            spool_dir=str(self.blob_dir) if self.blob_dir is not None else None,
        )
        with open(dest, "wb") if dest is not None else contextlib.nullcontext() as out:
            for piece in pieces:
                size += len(piece)
                if out is not None:
                    out.write(piece)
                else:
                    parts.append(piece)
        return str(root), size

    async def _upload_v3(self, request: httpx.Request) -> httpx.Response:
        def version(fields: dict[str, str]) -> int:
            return 0 if fields.get("cid_version") == "v0" else 1

        def car(fields: dict[str, str]) -> bool:
            return fields.get("car") == "true"

        got = await self._read_upload(request, version, car_of=car)
        if isinstance(got, httpx.Response):
            return got
        fields, cid, size, filename = got
        item = self._store(
            cid, size, fields.get("name", filename), json.loads(fields.get("keyvalues", "{}"))
        )
        return httpx.Response(
            200, json={"data": {**item, "network": fields.get("network", "private")}}
        )

    async def _upload_legacy(self, request: httpx.Request) -> httpx.Response:
        def version(fields: dict[str, str]) -> int:
            return int(json.loads(fields.get("pinataOptions", "{}")).get("cidVersion", 0))

        got = await self._read_upload(request, version)
        if isinstance(got, httpx.Response):
            return got
        fields, cid, size, filename = got
        meta = json.loads(fields.get("pinataMetadata", "{}"))
        self._store(cid, size, meta.get("name", filename), meta.get("keyvalues", {}))
        return httpx.Response(
            200,
            json={
                "IpfsHash": cid,
                "PinSize": size,
                "Timestamp": "2025-01-01T00:00:00.000Z",
                "isDuplicate": False,
            },
        )

    def _tus_create(self, request: httpx.Request) -> httpx.Response:
        import base64

        meta: dict[str, str] = {}
        for pair in request.headers.get("upload-metadata", "").split(","):
            if pair.strip():
                key, _, value = pair.strip().partition(" ")
                meta[key] = base64.b64decode(value).decode()
        version = 0 if meta.get("cid_version") == "v0" else 1
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = _Upload(
            length=int(request.headers["upload-length"]),
            metadata=meta,
            builder=CidBuilder(DagParams.kubo(version)),
            path=(self.blob_dir / f".tus-{upload_id}") if self.blob_dir is not None else None,
        )
        return httpx.Response(
            201, headers={"Location": f"/v3/files/{upload_id}", "Tus-Resumable": "1.0.0"}
        )

    async def _tus(self, request: httpx.Request, upload_id: str) -> httpx.Response:
        up = self.uploads.get(upload_id)
        if up is None:
            return httpx.Response(404)
        headers = {"Upload-Offset": str(up.offset), "Tus-Resumable": "1.0.0"}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Upload-Length": str(up.length)})
        if int(request.headers.get("upload-offset", "-1")) != up.offset:
            return httpx.Response(409, text="offset mismatch")
        assert isinstance(request.stream, httpx.AsyncByteStream)
        received = 0
        fh = await trio.open_file(up.path, "ab") if up.path is not None else None
        try:
            async for chunk in request.stream:
                if (
                    self.drop_patch_after is not None
                    and received + len(chunk) > self.drop_patch_after
                ):
                    keep = self.drop_patch_after - received
                    await self._tus_accept(up, chunk[:keep], fh)
                    self.drop_patch_after = None
                    raise httpx.ReadError("connection reset by peer", request=request)
                received += len(chunk)
                await self._tus_accept(up, chunk, fh)
        finally:
            if fh is not None:
                await fh.aclose()
        headers["Upload-Offset"] = str(up.offset)
        if up.offset == up.length:
            computed: str = await trio.to_thread.run_sync(up.builder.finalize)
            cid = self.cid_override or computed
            if up.path is not None:
                os.replace(up.path, up.path.with_name(cid))
            else:
                self.blobs[cid] = b"".join(up.parts)
            kv = json.loads(up.metadata.get("keyvalues", "{}"))
            self._store(cid, up.length, up.metadata.get("filename", ""), kv)
            headers["upload-cid"] = cid
        return httpx.Response(204, headers=headers)

    async def _tus_accept(self, up: _Upload, data: bytes, fh: Any) -> None:
        if not data:
            return
        await trio.to_thread.run_sync(up.builder.update, data)
        up.offset += len(data)
        if fh is not None:
            await fh.write(data)
        else:
            up.parts.append(data)

    # -- listing and pins ------------------------------------------------------------

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        items = list(self.files.values())
        if "cid" in params:
            items = [f for f in items if f["cid"] == params["cid"]]
        limit = int(params.get("limit", "10"))
        start = int(params.get("pageToken", "0") or 0)
        page = items[start : start + limit]
        token = str(start + limit) if start + limit < len(items) else ""
        return httpx.Response(200, json={"data": {"files": page, "next_page_token": token}})

    def _pin_list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        items = list(self.files.values())
        if "hashContains" in params:
            items = [f for f in items if params["hashContains"] in f["cid"]]
        limit = int(params.get("pageLimit", "10"))
        offset = int(params.get("pageOffset", "0"))
        rows = [
            {
                "id": f["id"],
                "ipfs_pin_hash": f["cid"],
                "size": f["size"],
                "user_id": "u",
                "date_pinned": f["created_at"],
                "date_unpinned": None,
                "metadata": {"name": f["name"], "keyvalues": f["keyvalues"]},
                "regions": [],
            }
            for f in items[offset : offset + limit]
        ]
        return httpx.Response(200, json={"count": len(items), "rows": rows})

    def _pin_by_cid(self, doc: dict[str, Any], *, legacy: bool = False) -> httpx.Response:
        self.pin_requests.append(doc)
        cid = doc.get("cid", "")
        if cid in self.sizes:  # "retrieved" from the network at once
            self._store(cid, self.sizes[cid], doc.get("name", ""), doc.get("keyvalues") or {})
        job = {"id": uuid.uuid4().hex, "cid": cid, "status": "prechecking", "name": doc.get("name")}
        if legacy:
            return httpx.Response(200, json={**job, "ipfsHash": cid})
        return httpx.Response(200, json={"data": job})

    # -- gateway ---------------------------------------------------------------------

    async def _gateway(self, request: httpx.Request, cid: str) -> httpx.Response:
        if self.gateway_token is not None and (
            request.headers.get("x-pinata-gateway-token") != self.gateway_token
        ):
            return httpx.Response(401, json={"error": "Unauthorized: invalid gateway token"})
        try:
            parse_cid(cid)
        except InvalidCIDError:
            return httpx.Response(400, text="invalid CID")
        if cid not in self.pinned_cids():
            return httpx.Response(404, text="Not Found")
        size = self.sizes[cid]
        start = 0
        status = 200
        rng = request.headers.get("range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = min(int(rng[len("bytes=") : -1]), size)
            status = 206
        end = size if self.truncate is None else min(size, start + self.truncate)

        async def body() -> AsyncIterator[bytes]:
            source = self.blob_dir / cid if self.blob_dir is not None else self.blobs[cid]
            async for piece in iter_source(
                source, offset=start, length=end - start, chunk_size=_STREAM_CHUNK
            ):
                yield self._maybe_corrupt(piece)

        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if self.truncate is None:
            headers["Content-Length"] = str(size - start)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        return httpx.Response(status, content=body(), headers=headers)

    def _maybe_corrupt(self, piece: bytes) -> bytes:
        if self.corrupt and piece:
            return bytes([piece[0] ^ 0xFF]) + piece[1:]
        return piece
