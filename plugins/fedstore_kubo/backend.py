"""KuboBackend: a Kubo (go-ipfs) daemon's HTTP RPC API as a fedstore backend.

Request shapes follow Kubo's RPC (``POST /api/v0/<command>``, positional
arguments in ``?arg=``, flags as query parameters):

* ``add`` streams the file as ``multipart/form-data`` with the DAG parameters
  passed explicitly (``cid-version``, ``raw-leaves``, ``chunker=size-262144``,
  ``hash=sha2-256``, ``trickle=false``, ``max-file-links=174``) so the daemon's
  ``Import.*`` config cannot change the CID. fedstore computes the CID of the
  same bytes while sending them and raises :class:`CIDMismatchError` (after
  unpinning the stray root) if Kubo answers with another.
* ``cat`` reads with ``offline=true`` by default, so a CID the node does not
  hold fails at once with :class:`NotFoundError` instead of searching the
  network; with ``fetch_timeout`` set it may search the network for that long
  (Kubo's ``timeout`` option). A broken stream is resumed with ``offset=``.
  httpx does not expose the ``X-Stream-Error`` trailer, so the received
  length is checked against ``X-Content-Length``, and the chain verifies the
  bytes against the CID in any case.
* ``has`` asks ``pin/ls?type=recursive``: a CID counts as held while it is
  pinned (unpinned blocks may vanish at the next garbage collection).
* ``pin/add`` (with ``timeout``), ``pin/rm`` (absent is success),
  ``version`` + ``id`` for health.

Kubo answers a failed command with HTTP 500 and ``{"Message", "Code",
"Type": "error"}``; such errors are classified by their message (not found,
not pinned, deadline) and are not retried unless they say rate limited.
Connection failures, timeouts, 429, 502-504 and non-Kubo 5xx are retried.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self
from urllib.parse import quote

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
from fedstore.backends.http import (
    Classifier,
    HeaderAuth,
    Redactor,
    RetryPolicy,
    Secret,
    default_timeout,
    json_object,
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
from fedstore.errors import (
    AuthError,
    BackendError,
    CIDMismatchError,
    ConfigError,
    NotConfiguredError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from fedstore.ipld.cid import parse_cid
from fedstore_kubo import settings as kubo_settings
from fedstore_kubo.address import DEFAULT_API_URL, api_file, api_url_from_env, api_url_from_text

__all__ = ["KuboBackend"]

log = logging.getLogger("fedstore.backends.kubo")

CHUNK_SIZE = 262144
MAX_FILE_LINKS = 174
_NOT_FOUND_HINTS = (
    "not found locally",
    "could not find",
    "not found",
    "no link named",
    "context deadline exceeded",
)


def _kubo_error(body: str) -> tuple[str, int] | None:
    """``(Message, Code)`` of a Kubo command error body, or None if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("Type") == "error" and isinstance(doc.get("Message"), str):
        code = doc.get("Code")
        return doc["Message"], code if isinstance(code, int) else 0
    return None


def _classifier(action: str, *, token_set: bool) -> Classifier:
    def classify(response: httpx.Response, body: str) -> BackendError | None:
        status = response.status_code
        err = _kubo_error(body)
        if err is not None:
            message, code = err
            low = message.lower()
            if code == 3:
                return RateLimitedError(f"kubo: {action}: {message}", backend="kubo")
            if code == 4:
                return AuthError(f"kubo: {action} forbidden: {message}", backend="kubo")
            if "not pinned" in low:
                return NotFoundError(f"kubo: {action}: {message}", backend="kubo")
            if any(h in low for h in _NOT_FOUND_HINTS):
                return NotFoundError(
                    f"kubo: {action}: the node does not have it ({message})", backend="kubo"
                )
            return BackendError(f"kubo: {action} failed: {message}", backend="kubo")
        if status == 401:
            hint = (
                "the token in FEDSTORE_KUBO_TOKEN was rejected; compare it with API.Authorizations"
                if token_set
                else "the daemon requires auth: set FEDSTORE_KUBO_TOKEN"
            )
            return AuthError(f"kubo: {action}: 401 Unauthorized: {hint}", backend="kubo")
        if status == 403:
            return AuthError(
                f"kubo: {action}: 403 Forbidden (origin rejected or token lacks access)",
                backend="kubo",
            )
        if status in (404, 405):
            return BackendError(
                f"kubo: {action}: {status} from the API address; is FEDSTORE_KUBO_API a Kubo "
                "RPC API (port 5001), not a gateway?",
                backend="kubo",
            )
        if status == 400:
            return BackendError(f"kubo: {action}: bad request: {body[:300]}", backend="kubo")
        return None

    return classify


class KuboBackend(StorageBackend):
    """Stores checkpoints in a Kubo node (added and pinned there).

    Settings (:mod:`fedstore_kubo.settings`; ``[kubo]`` in fedstore.toml):
    ``FEDSTORE_KUBO_API`` (multiaddr or URL; else ``$IPFS_PATH/api``, else
    ``127.0.0.1:5001``), ``FEDSTORE_KUBO_TOKEN`` (sent as ``Authorization:
    Bearer``; ``basic:user:pass`` for Basic), ``FEDSTORE_KUBO_FETCH_TIMEOUT``
    (seconds a read may search the network; unset or 0 = local only),
    ``FEDSTORE_KUBO_PIN_TIMEOUT`` (default 60), and the HTTP retry settings.
    Joins the default chain (priority 200, after a pinning service) when
    ``FEDSTORE_KUBO_API`` is set or a Kubo API file exists.
    """

    name = "kubo"
    supports_pinning = True
    settings = kubo_settings.SETTINGS

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        *,
        token: str | None = None,
        fetch_timeout: float | None = None,
        pin_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        origin: str = "arguments",
    ) -> None:
        self.api_url = api_url_from_text(api_url)
        self._origin = origin
        self.fetch_timeout = fetch_timeout if fetch_timeout else None
        self.pin_timeout = pin_timeout
        self.retry = retry or RetryPolicy()
        self._chunk_size = chunk_size
        self._token_set = bool(token)
        auth: httpx.Auth | None = None
        self._redact = Redactor()
        if token:
            if token.startswith("basic:"):
                creds = base64.b64encode(token[len("basic:") :].encode()).decode()
                header = Secret(f"Basic {creds}")
                self._redact = Redactor([token, creds, token[len("basic:") :]])
            else:
                header = Secret(f"Bearer {token.removeprefix('bearer:')}")
                self._redact = Redactor([token, token.removeprefix("bearer:")])
            auth = HeaderAuth({"Authorization": header})
        self._client = httpx.AsyncClient(
            base_url=f"{self.api_url}/api/v0/",
            auth=auth,
            timeout=timeout or default_timeout(),
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            headers={"User-Agent": "fedstore-kubo"},
            trust_env=False,
        )
        self._closed = False

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> Self:
        try:
            url, origin = api_url_from_env(settings)
        except ConfigError as exc:
            raise NotConfiguredError(f"kubo: {exc}", backend="kubo") from exc
        return cls(
            url,
            origin=origin,
            retry=RetryPolicy.from_env(settings),
            token=kubo_settings.TOKEN.text(settings) or None,
            fetch_timeout=kubo_settings.FETCH_TIMEOUT.number(settings),
            pin_timeout=kubo_settings.PIN_TIMEOUT.number(settings),
        )

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        """Priority 200 when ``FEDSTORE_KUBO_API`` is set or ``$IPFS_PATH/api`` exists."""
        if kubo_settings.API.is_set(settings):
            return Detected(200, f"{kubo_settings.API.name} is set")
        path = api_file(settings)
        if path.exists():
            return Detected(200, f"{path} exists")
        return None

    def __repr__(self) -> str:
        auth = " auth=***" if self._token_set else ""
        return f"<KuboBackend api={self.api_url}{auth}>"

    # -- helpers ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError("kubo: backend is closed", backend="kubo")

    async def _post(
        self,
        command: str,
        params: Mapping[str, str],
        *,
        action: str,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        self._check_open()
        request_timeout: httpx.Timeout | httpx._client.UseClientDefault = (
            default_timeout(read=timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT
        )

        async def attempt() -> httpx.Response:
            request = self._client.build_request(
                "POST",
                command,
                params=params,
                timeout=request_timeout,
            )
            return await self._send(request, action)

        return await with_retries(
            attempt, policy=policy or self.retry, backend="kubo", action=action
        )

    async def _send(self, request: httpx.Request, action: str) -> httpx.Response:
        """One request, answered 2xx or raised as a fedstore error (classified, redacted)."""
        return await send(
            self._client,
            request,
            backend="kubo",
            action=action,
            redact=self._redact,
            classify=_classifier(action, token_set=self._token_set),
        )

    def _json(self, response: httpx.Response, action: str) -> dict[str, Any]:
        return json_object(response, backend="kubo", action=action, redact=self._redact)

    def _read_options(self) -> dict[str, str]:
        if self.fetch_timeout:
            return {"timeout": f"{self.fetch_timeout:g}s"}
        return {"offline": "true"}

    # -- contract -------------------------------------------------------------

    async def add(
        self,
        source: Source,
        *,
        cid_version: int = 0,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """``POST /api/v0/add`` with explicit DAG parameters; pins the result."""
        self._check_open()
        if cid_version not in (0, 1):
            raise ConfigError(f"cid_version must be 0 or 1, not {cid_version!r}")
        size = source_size(source)
        params = {
            "cid-version": str(cid_version),
            "raw-leaves": "true" if cid_version == 1 else "false",
            "chunker": f"size-{CHUNK_SIZE}",
            "hash": "sha2-256",
            "trickle": "false",
            "max-file-links": str(MAX_FILE_LINKS),
            "inline": "false",
            "pin": "true",
            "progress": "false",
            "wrap-with-directory": "false",
        }
        if name:
            params["pin-name"] = name[:200]
        filename = quote(name or "checkpoint", safe="")[:200]
        tap = CidTap(cid_version)
        action = "add"

        async def attempt() -> tuple[str, str]:
            body = MultipartBody(
                [],
                file_field="file",
                filename=filename,
                source=source,
                chunk_size=self._chunk_size,
                on_chunk=tap,
            )
            request = self._client.build_request(
                "POST", "add", params=params, content=body, headers=body.headers()
            )
            response = await self._send(request, action)
            return _parse_add(response.text, self._redact)

        remote_cid, _dag_size = await with_retries(
            attempt, policy=self.retry, backend="kubo", action=action
        )
        local_cid = await tap.cid(source, size)
        if not same_cid(remote_cid, local_cid):
            await self._unpin_quietly(remote_cid)
            raise CIDMismatchError(
                f"kubo stored the data as {remote_cid}, but fedstore computes {local_cid} "
                f"(cid-version={cid_version}, chunker=size-{CHUNK_SIZE}); the daemon may be "
                "ignoring import options; the stray pin was removed",
                backend="kubo",
            )
        return StoredObject(cid=local_cid, size=size)

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        """``POST /api/v0/cat`` streamed; resumes with ``offset=`` after a broken connection."""
        self._check_open()
        parse_cid(cid)
        read_opts = self._read_options()

        def make(offset: int) -> httpx.Request:
            params = {"arg": cid, **read_opts}
            if offset:
                params["offset"] = str(offset)
            return self._client.build_request("POST", "cat", params=params)

        action = f"cat {cid}"
        download = stream_download(
            self._client,
            make,
            backend="kubo",
            action=action,
            redact=self._redact,
            policy=self.retry,
            classify=_classifier(action, token_set=self._token_set),
            expected_length=_x_content_length,
        )
        async with aclosing_stream(download) as stream:  # the response is released at once
            async for chunk in stream:
                yield chunk

    async def has(self, cid: str) -> bool:
        """Whether *cid* is pinned (recursively) on the node."""
        parse_cid(cid)
        try:
            response = await self._post(
                "pin/ls",
                {"arg": cid, "type": "recursive", "offline": "true"},
                action=f"pin ls {cid}",
            )
        except NotFoundError:
            return False
        keys = self._json(response, f"pin ls {cid}").get("Keys") or {}
        return isinstance(keys, dict) and any(same_cid(k, cid) for k in keys)

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """``pin/add`` (recursive); Kubo may fetch missing blocks for up to ``pin_timeout``."""
        parse_cid(cid)
        params = {
            "arg": cid,
            "recursive": "true",
            "progress": "false",
            "timeout": f"{self.pin_timeout:g}s",
        }
        if name:
            params["name"] = name[:200]
        response = await self._post(
            "pin/add", params, action=f"pin add {cid}", timeout=self.pin_timeout + 30
        )
        pins = self._json(response, f"pin add {cid}").get("Pins") or []
        if not isinstance(pins, list) or not any(
            isinstance(p, str) and same_cid(p, cid) for p in pins
        ):
            shown = self._redact(repr(pins)[:4096])[:120]
            raise BackendError(f"kubo: pin add {cid} answered without that pin: {shown}")
        return StoredObject(cid=cid, size=-1)

    async def unpin(self, cid: str, *, backend_ref: str | None = None) -> None:
        """``pin/rm`` (recursive). Not pinned counts as done."""
        parse_cid(cid)
        try:
            await self._post("pin/rm", {"arg": cid, "recursive": "true"}, action=f"pin rm {cid}")
        except NotFoundError:
            return

    async def _unpin_quietly(self, cid: str) -> None:
        try:
            await self.unpin(cid)
        except Exception as exc:  # best effort: the caller raises the real error
            log.warning("kubo: could not remove stray pin %s: %s", cid, exc)

    async def health(self) -> Health:
        """``version`` and ``id``: reachable, authenticated (if a token is set), version."""
        try:
            once = RetryPolicy.none()
            version = self._json(
                await self._post("version", {}, action="version", policy=once), "version"
            )
            ident = self._json(await self._post("id", {}, action="id", policy=once), "id")
        except AuthError as exc:
            return Health(reachable=True, authenticated=False, detail=str(exc))
        except UnavailableError as exc:
            return Health(
                reachable=False,
                detail=f"{exc} (is the daemon running? address from {self._origin})",
            )
        except BackendError as exc:  # answered, but not as a usable Kubo API
            return Health(reachable=False, detail=str(exc))
        peer = str(ident.get("ID", ""))
        return Health(
            reachable=True,
            authenticated=True if self._token_set else None,
            version=f"kubo {version.get('Version', '?')}",
            detail=f"{self.api_url}, peer {peer[:12]}…" if peer else self.api_url,
            extra={
                "api": self.api_url,
                "peer_id": peer,
                "agent": str(ident.get("AgentVersion", "")),
            },
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()


def _parse_add(text: str, redact: Redactor) -> tuple[str, str]:
    """Root ``(Hash, Size)`` from ``add``'s NDJSON: the last event carrying a ``Hash``."""
    root: tuple[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise BackendError(
                f"kubo: add answered a non-JSON line: {redact(line[:4096])[:120]!r}",
                backend="kubo",
            ) from exc
        if isinstance(event, dict) and isinstance(event.get("Hash"), str):
            root = (event["Hash"], str(event.get("Size", "")))
    if root is None:
        raise UnavailableError(
            "kubo: add ended without reporting a CID (the daemon's error is in the "
            "X-Stream-Error trailer, which httpx cannot read; check the daemon log)",
            backend="kubo",
        )
    return root


def _x_content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("x-content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
