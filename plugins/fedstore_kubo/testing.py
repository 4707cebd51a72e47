"""An in-process fake Kubo RPC API, as an httpx transport (tests and benchmarks).

``FakeKubo`` answers the commands :class:`~fedstore_kubo.KuboBackend` uses
with Kubo's real shapes (``add`` NDJSON, ``cat`` byte stream with
``X-Content-Length``, ``pin/*`` JSON, ``{"Message","Code","Type"}`` errors with
HTTP 500) and computes CIDs with :mod:`fedstore.ipld.cid` from the DAG options in
the query, exactly as a daemon honouring them would. Request bodies are
parsed as they stream and blobs may live in a directory, so a 1 GiB upload
never sits in memory. Knobs let tests misbehave on purpose: ``down``
(connection refused), ``cid_override`` (answer another CID), ``corrupt``
(serve wrong bytes), ``truncate`` (end a ``cat`` stream early), ``echo``
(answer every request with an error body built from the credential it
carried, as a careless proxy or server does: for redaction tests).

Usage::

    fake = FakeKubo()
    backend = KuboBackend("http://kubo.test:5001", transport=fake)
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import trio

from fedstore.backends.streaming import iter_source, read_multipart
from fedstore.errors import InvalidCIDError
from fedstore.ipld.cid import CidBuilder, DagParams, parse_cid

__all__ = ["FakeKubo"]

_STREAM_CHUNK = 256 * 1024


def _error(message: str, code: int = 0, status: int = 500) -> httpx.Response:
    return httpx.Response(status, json={"Message": message, "Code": code, "Type": "error"})


class FakeKubo(httpx.AsyncBaseTransport):
    """A stateful fake of Kubo's ``/api/v0`` (in memory, or blobs under *blob_dir*)."""

    def __init__(self, *, token: str | None = None, blob_dir: Path | None = None) -> None:
        self.token = token
        self.blob_dir = blob_dir
        self.blobs: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}
        self.pins: dict[str, str] = {}  # cid -> pin name
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.down = False
        self.cid_override: str | None = None
        self.corrupt = False
        self.truncate: int | None = None
        #: Answers (or exceptions) to give to the next requests, before anything else.
        self.fail_next: list[httpx.Response | Exception] = []
        #: Given the request's Authorization header, the raw body of an error answer
        #: (status ``echo_status``) sent instead of doing anything.
        self.echo: Callable[[str], str] | None = None
        self.echo_status = 500
        self.version = "0.32.1"
        self.peer_id = "12D3KooWFakeKuboPeerIdForFedstoreTests000000000000"

    # -- storage -----------------------------------------------------------------

    def _has(self, cid: str) -> bool:
        return cid in self.sizes

    # -- transport ---------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        params = dict(request.url.params)
        self.requests.append((path, params))
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
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return httpx.Response(401, text="401 - Unauthorized\n")
        if request.method != "POST":
            return httpx.Response(405, text="405 - Method Not Allowed\n")
        if not path.startswith("/api/v0/"):
            return httpx.Response(404, text="404 page not found\n")
        command = path[len("/api/v0/") :]
        if command in ("cat", "pin/add", "pin/rm", "pin/ls") and "arg" in params:
            try:
                parse_cid(params["arg"])
            except InvalidCIDError:
                return _error(f"invalid path {params['arg']!r}: invalid cid", code=1, status=400)
        handler = {
            "add": self._add,
            "cat": self._cat,
            "pin/add": self._pin_add,
            "pin/rm": self._pin_rm,
            "pin/ls": self._pin_ls,
            "version": self._version,
            "id": self._id,
        }.get(command)
        if handler is None:
            return httpx.Response(404, text="404 page not found\n")
        return await handler(request, params)

    async def _add(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        ctype = request.headers.get("content-type", "")
        if "boundary=" not in ctype:
            return _error("file argument 'path' is required", code=1, status=400)
        boundary = ctype.split("boundary=", 1)[1].strip('"')
        version = int(params.get("cid-version", "0"))
        raw = params.get("raw-leaves", "true" if version == 1 else "false") == "true"
        chunk = int(params.get("chunker", "size-262144").removeprefix("size-"))
        links = int(params.get("max-file-links", "174"))
        builder = CidBuilder(
            DagParams(cid_version=version, chunk_size=chunk, max_links=links, raw_leaves=raw)
        )
        parts: list[bytes] = []
        names: list[str] = []
        tmp = (
            self.blob_dir / f".upload-{os.urandom(6).hex()}" if self.blob_dir is not None else None
        )
        fh = await trio.open_file(tmp, "wb") if tmp is not None else None
        size = 0

        async def on_field(_name: str, _value: str) -> None:
            return None

        async def on_file(_name: str, filename: str, data: bytes) -> None:
            nonlocal size
            if not names:
                names.append(filename)
            if data:
                size += len(data)
                await trio.to_thread.run_sync(builder.update, data)
                if fh is not None:
                    await fh.write(data)
                else:
                    parts.append(data)

        try:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            await read_multipart(
                request.stream.__aiter__(), boundary, on_field=on_field, on_file=on_file
            )
        except ValueError as exc:
            return _error(f"multipart: {exc}", code=1, status=400)
        finally:
            if fh is not None:
                await fh.aclose()
        computed: str = await trio.to_thread.run_sync(builder.finalize)
        cid = self.cid_override or computed
        if tmp is not None:
            os.replace(tmp, tmp.with_name(cid))
        else:
            self.blobs[cid] = b"".join(parts)
        self.sizes[cid] = size
        if params.get("pin", "true") == "true":
            self.pins[cid] = params.get("pin-name", "")
        event = {"Name": names[0] if names else cid, "Hash": cid, "Size": str(size + 14)}
        return httpx.Response(
            200,
            content=(json.dumps(event) + "\n").encode(),
            headers={"X-Chunked-Output": "1", "Trailer": "X-Stream-Error"},
        )

    async def _cat(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        cid = params.get("arg", "")
        if not self._has(cid):
            if params.get("offline") == "true":
                return _error(f"block was not found locally (offline): ipld: could not find {cid}")
            return _error("context deadline exceeded")
        size = self.sizes[cid]
        offset = min(int(params.get("offset", "0")), size)
        length = size - offset
        limit = length if self.truncate is None else min(length, self.truncate)

        async def body() -> AsyncIterator[bytes]:
            source = self.blob_dir / cid if self.blob_dir is not None else self.blobs[cid]
            async for piece in iter_source(
                source, offset=offset, length=limit, chunk_size=_STREAM_CHUNK
            ):
                yield self._maybe_corrupt(piece)

        return httpx.Response(
            200,
            content=body(),
            headers={
                "X-Content-Length": str(length),
                "X-Stream-Output": "1",
                "Trailer": "X-Stream-Error",
                "Content-Type": "text/plain",
            },
        )

    def _maybe_corrupt(self, piece: bytes) -> bytes:
        if self.corrupt and piece:
            return bytes([piece[0] ^ 0xFF]) + piece[1:]
        return piece

    async def _pin_add(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        cid = params.get("arg", "")
        if not self._has(cid):
            return _error("pin: context deadline exceeded")
        self.pins[cid] = params.get("name", "")
        return httpx.Response(200, json={"Pins": [cid]})

    async def _pin_rm(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        cid = params.get("arg", "")
        if cid not in self.pins:
            return _error("not pinned or pinned indirectly")
        del self.pins[cid]
        return httpx.Response(200, json={"Pins": [cid]})

    async def _pin_ls(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        cid = params.get("arg")
        if cid is None:
            keys = {c: {"Type": "recursive", "Name": n} for c, n in self.pins.items()}
            return httpx.Response(200, json={"Keys": keys})
        if cid not in self.pins:
            return _error(f"path '{cid}' is not pinned")
        return httpx.Response(
            200, json={"Keys": {cid: {"Type": "recursive", "Name": self.pins[cid]}}}
        )

    async def _version(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "Version": self.version,
                "Commit": "fake",
                "Repo": "16",
                "System": "amd64/linux",
                "Golang": "go1.23.4",
            },
        )

    async def _id(self, request: httpx.Request, params: dict[str, str]) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "ID": self.peer_id,
                "PublicKey": "CAESIFakeKey",
                "Addresses": [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.peer_id}"],
                "AgentVersion": f"kubo/{self.version}/fake",
                "Protocols": ["/ipfs/bitswap/1.2.0"],
            },
        )
