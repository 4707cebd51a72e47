"""HTTP plumbing of the Pinata backend: one httpx client, retries, rate limit, redaction.

:class:`PinataClient` is shared by the backend's parts (uploads in
:mod:`fedstore_pinata.upload`, the account's files in
:mod:`fedstore_pinata.files`, gateway reads in :mod:`fedstore_pinata.backend`).
Credentials travel in an httpx auth flow, never in URLs, and every error
message passes through the client's :class:`~fedstore.backends.http.Redactor`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from fedstore.backends import Source
from fedstore.backends.http import (
    Classifier,
    HeaderAuth,
    RateLimiter,
    Redactor,
    RetryPolicy,
    default_timeout,
    json_object,
    send,
    with_retries,
)
from fedstore.backends.streaming import DEFAULT_CHUNK_SIZE, CidTap, MultipartBody
from fedstore.errors import BackendError
from fedstore_pinata.car_upload import CarMultipartBody, CarPlan
from fedstore_pinata.config import PinataConfig, pinata_classifier

__all__ = ["PinataClient"]


class PinataClient:
    """Sends requests to Pinata's API with retries; the one place that owns the httpx client.

    ``gateway_auth`` carries the gateway token for downloads (a separate auth
    flow, so the API credentials never reach the gateway and vice versa).
    """

    def __init__(
        self,
        config: PinataConfig,
        *,
        retry: RetryPolicy,
        timeout: httpx.Timeout | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.retry = retry
        self.chunk_size = chunk_size
        self.redact = Redactor(config.secrets())
        if limiter is None and config.rate_limit:
            limiter = RateLimiter(config.rate_limit, sleep=retry.sleep)
        self.limiter = limiter
        self.gateway_auth = HeaderAuth(
            {"x-pinata-gateway-token": config.gateway_token} if config.gateway_token else {}
        )
        self.http = httpx.AsyncClient(
            auth=HeaderAuth(config.api_headers()),
            timeout=timeout or default_timeout(read=300.0),
            transport=transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            headers={"User-Agent": "fedstore-pinata", "Source": "fedstore"},
            follow_redirects=False,
        )
        self.closed = False

    def __repr__(self) -> str:
        return f"<PinataClient mode={self.config.mode} api={self.config.api_url} credentials=***>"

    @property
    def v3(self) -> str:
        """Base URL of the v3 API."""
        return f"{self.config.api_url}/v3"

    def classify(self, action: str, *, gateway: bool = False) -> Classifier:
        return pinata_classifier(self.config, action, gateway=gateway)

    def check_open(self) -> None:
        if self.closed:
            raise BackendError("pinata: backend is closed", backend="pinata")

    async def _send(self, request: httpx.Request, action: str) -> httpx.Response:
        return await send(
            self.http,
            request,
            backend="pinata",
            action=action,
            redact=self.redact,
            classify=self.classify(action),
            limiter=self.limiter,
        )

    async def call(
        self,
        method: str,
        url: str,
        *,
        action: str,
        params: Mapping[str, str] | None = None,
        json_body: object | None = None,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """One API request (optional JSON body), retried under ``policy`` (default: ``retry``)."""
        self.check_open()

        async def attempt() -> httpx.Response:
            request = self.http.build_request(
                method,
                url,
                params=params,
                content=json.dumps(json_body).encode() if json_body is not None else None,
                headers={"Content-Type": "application/json"} if json_body is not None else None,
            )
            return await self._send(request, action)

        return await with_retries(
            attempt, policy=policy or self.retry, backend="pinata", action=action
        )

    async def post_multipart(
        self,
        url: str,
        action: str,
        fields: list[tuple[str, str]],
        filename: str,
        source: Source,
        tap: CidTap,
    ) -> httpx.Response:
        """POST a streamed multipart upload (fields, then the file), with retries.

        Every attempt streams ``source`` afresh through ``tap`` (which computes
        fedstore's CID of the bytes as they go).
        """

        def body() -> MultipartBody:
            return MultipartBody(
                fields,
                file_field="file",
                filename=filename,
                source=source,
                chunk_size=self.chunk_size,
                on_chunk=tap,
            )

        return await self.post_form(url, action, body)

    async def post_car(
        self,
        url: str,
        action: str,
        fields: list[tuple[str, str]],
        filename: str,
        source: Source,
        plan: CarPlan,
    ) -> httpx.Response:
        """POST a multipart upload whose file part is the CAR of ``source`` (see ``plan``)."""

        def body() -> CarMultipartBody:
            return CarMultipartBody(
                fields,
                file_field="file",
                filename=filename,
                source=source,
                plan=plan,
                chunk_size=self.chunk_size,
            )

        return await self.post_form(url, action, body)

    async def post_form(
        self, url: str, action: str, make_body: Callable[[], MultipartBody | CarMultipartBody]
    ) -> httpx.Response:
        """POST a streamed body with retries; ``make_body()`` gives each attempt a fresh one."""
        self.check_open()

        async def attempt() -> httpx.Response:
            body = make_body()
            request = self.http.build_request("POST", url, content=body, headers=body.headers())
            return await self._send(request, action)

        return await with_retries(attempt, policy=self.retry, backend="pinata", action=action)

    def json(self, response: httpx.Response, action: str) -> dict[str, Any]:
        """The JSON object of an answer; :class:`BackendError` (redacted) if it is not one."""
        return json_object(response, backend="pinata", action=action, redact=self.redact)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.http.aclose()
