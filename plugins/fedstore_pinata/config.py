"""Pinata settings and Pinata-specific error classification.

Settings (environment or ``fedstore.toml``):

==========================  ===================================================
``PINATA_JWT``              v3 API credentials (Bearer JWT); preferred.
``PINATA_API_KEY`` +        legacy key pair (``pinata_api_key`` /
``PINATA_API_SECRET``       ``pinata_secret_api_key`` headers): legacy mode.
``PINATA_MODE``             ``v3`` (default with a JWT) or ``legacy`` (default
                            with a key pair; a JWT works there too).
``PINATA_API_URL``          default ``https://api.pinata.cloud``.
``PINATA_UPLOAD_URL``       default ``https://uploads.pinata.cloud``.
``PINATA_GATEWAY_URL``      dedicated gateway for downloads
                            (``https://<name>.mypinata.cloud``).
``PINATA_GATEWAY_TOKEN``    sent as ``x-pinata-gateway-token``.
``PINATA_GROUP_ID``         optional v3 group for uploads.
``PINATA_RATE_LIMIT``       client-side requests per minute (default 60, the
                            free plan; 0 disables).
``PINATA_TUS_THRESHOLD``    bytes above which uploads are resumable (TUS);
                            default 94371840 (90 MiB, as Pinata's SDK).
``PINATA_TUS_CHUNK``        TUS chunk size in bytes (default 50 MiB).
``PINATA_UPLOAD_FORMAT``    v3 uploads up to the TUS threshold: ``car``
                            (default: a locally built CAR with ``car=true``,
                            so Pinata's CID is fedstore's by construction)
                            or ``file`` (the raw file; Pinata chunks it and
                            its CID is checked). TUS and legacy uploads
                            always send the file.
==========================  ===================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from fedstore.backends.http import Classifier, Secret, display_url
from fedstore.errors import AuthError, BackendError, NotConfiguredError, NotFoundError, QuotaError

__all__ = ["PinataConfig", "pinata_classifier", "pinata_reason"]

DEFAULT_API_URL = "https://api.pinata.cloud"
DEFAULT_UPLOAD_URL = "https://uploads.pinata.cloud"
#: Pinata's SDK switches to resumable uploads above this size.
DEFAULT_TUS_THRESHOLD = 94_371_840
#: TUS chunk size (Pinata's SDK uses about 50 MiB).
DEFAULT_TUS_CHUNK = 50 * 1024 * 1024
#: Values of PINATA_UPLOAD_FORMAT.
UPLOAD_FORMATS = ("car", "file")
_QUOTA_WORDS = ("limit", "quota", "plan", "storage", "exceed", "insufficient")


def _base_url(value: str, setting: str, *, strip: str = "") -> str:
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = f"https://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotConfiguredError(
            f"pinata: {setting}={display_url(value)!r} is not an http(s) URL with a host name"
        )
    if parts.username or parts.password or parts.query:
        raise NotConfiguredError(
            f"pinata: {setting} must be a plain URL (no credentials or query); "
            "credentials go in PINATA_JWT / PINATA_GATEWAY_TOKEN"
        )
    if strip and value.endswith(strip):
        value = value[: -len(strip)]
    return value


@dataclass(frozen=True)
class PinataConfig:
    """Everything a :class:`~fedstore_pinata.PinataBackend` needs. Secrets are :class:`Secret`."""

    jwt: Secret | None = None
    api_key: Secret | None = None
    api_secret: Secret | None = None
    mode: str = "v3"
    api_url: str = DEFAULT_API_URL
    upload_url: str = DEFAULT_UPLOAD_URL
    gateway_url: str | None = None
    gateway_token: Secret | None = None
    group_id: str | None = None
    rate_limit: float = 0.0
    tus_threshold: int = DEFAULT_TUS_THRESHOLD
    tus_chunk: int = DEFAULT_TUS_CHUNK
    upload_format: str = "car"

    def __post_init__(self) -> None:
        if self.mode not in ("v3", "legacy"):
            raise NotConfiguredError(f"pinata: PINATA_MODE must be v3 or legacy, not {self.mode!r}")
        if self.mode == "v3" and not self.jwt:
            raise NotConfiguredError(
                "pinata: the v3 API needs PINATA_JWT (an API key pair works only with "
                "PINATA_MODE=legacy)"
            )
        if self.mode == "legacy" and not (self.jwt or (self.api_key and self.api_secret)):
            raise NotConfiguredError(
                "pinata: legacy mode needs PINATA_JWT or PINATA_API_KEY + PINATA_API_SECRET"
            )
        if self.upload_format not in UPLOAD_FORMATS:
            raise NotConfiguredError(
                f"pinata: PINATA_UPLOAD_FORMAT must be car or file, not {self.upload_format!r}"
            )
        if self.tus_chunk < 1024 or self.tus_threshold < 0:
            raise NotConfiguredError("pinata: TUS chunk/threshold sizes are out of range")

    @property
    def credential_name(self) -> str:
        """What the user set, for messages: ``the JWT`` / ``the API key``."""
        return "the JWT" if self.jwt else "the API key"

    @property
    def credential_env(self) -> str:
        return "PINATA_JWT" if self.jwt else "PINATA_API_KEY and PINATA_API_SECRET"

    def secrets(self) -> list[Secret | None]:
        return [self.jwt, self.api_key, self.api_secret, self.gateway_token]

    def api_headers(self) -> dict[str, Secret]:
        if self.jwt:
            return {"Authorization": Secret(f"Bearer {self.jwt.reveal()}")}
        assert self.api_key is not None and self.api_secret is not None
        return {"pinata_api_key": self.api_key, "pinata_secret_api_key": self.api_secret}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PinataConfig:
        """Read settings; raise NotConfiguredError when no credentials are set."""
        jwt = env.get("PINATA_JWT", "").strip()
        key = env.get("PINATA_API_KEY", "").strip()
        secret = env.get("PINATA_API_SECRET", "").strip()
        if not jwt and not (key and secret):
            raise NotConfiguredError(
                "pinata: set PINATA_JWT (v3 API) or PINATA_API_KEY + PINATA_API_SECRET (legacy)"
            )
        mode = env.get("PINATA_MODE", "").strip().lower() or ("v3" if jwt else "legacy")
        gateway = env.get("PINATA_GATEWAY_URL", "").strip()
        token = env.get("PINATA_GATEWAY_TOKEN", "").strip()
        return cls(
            jwt=Secret(jwt) if jwt else None,
            api_key=Secret(key) if key else None,
            api_secret=Secret(secret) if secret else None,
            mode=mode,
            api_url=_base_url(
                env.get("PINATA_API_URL") or DEFAULT_API_URL, "PINATA_API_URL", strip="/v3"
            ),
            upload_url=_base_url(
                env.get("PINATA_UPLOAD_URL") or DEFAULT_UPLOAD_URL, "PINATA_UPLOAD_URL", strip="/v3"
            ),
            gateway_url=_base_url(gateway, "PINATA_GATEWAY_URL", strip="/ipfs")
            if gateway
            else None,
            gateway_token=Secret(token) if token else None,
            group_id=env.get("PINATA_GROUP_ID", "").strip() or None,
            rate_limit=_number(env, "PINATA_RATE_LIMIT", 60.0),
            tus_threshold=int(_number(env, "PINATA_TUS_THRESHOLD", DEFAULT_TUS_THRESHOLD)),
            tus_chunk=int(_number(env, "PINATA_TUS_CHUNK", DEFAULT_TUS_CHUNK)),
            upload_format=env.get("PINATA_UPLOAD_FORMAT", "").strip().lower() or "car",
        )


def _number(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise NotConfiguredError(f"pinata: {key}={raw!r} is not a number") from None
    if value < 0:
        raise NotConfiguredError(f"pinata: {key} must not be negative")
    return value


def pinata_reason(body: str) -> tuple[str, str]:
    """``(reason code, details)`` from a Pinata error body (legacy, v3 or plain text)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "", " ".join(body.split())[:300]
    if not isinstance(doc, dict):
        return "", str(doc)[:300]
    err = doc.get("error", doc)
    if isinstance(err, str):
        return (err if err.isupper() and " " not in err else ""), (
            str(doc.get("details") or doc.get("message") or err)[:300]
        )
    if isinstance(err, dict):
        reason = str(err.get("reason") or err.get("code") or "")
        details = str(err.get("details") or err.get("message") or "")
        return reason, details[:300]
    return "", str(doc)[:300]


def pinata_classifier(config: PinataConfig, action: str, *, gateway: bool = False) -> Classifier:
    """Map Pinata's answers to errors a user can act on."""

    def classify(response: httpx.Response, body: str) -> BackendError | None:
        status = response.status_code
        reason, details = pinata_reason(body)
        label = f"{status} {reason}" if reason else str(status)
        more = f" ({details})" if details and details != reason else ""
        low = f"{reason} {details}".lower()
        if gateway:
            if status == 401 or status == 403:
                return AuthError(
                    f"the Pinata gateway refused {action} ({label}){more}: check "
                    "PINATA_GATEWAY_TOKEN, and that the CID is pinned to this account "
                    "(a dedicated gateway serves only its account's files by default)",
                    backend="pinata",
                )
            if status == 404:
                return NotFoundError(f"pinata gateway: {action}: not found", backend="pinata")
            return None
        if status in (402, 413) or (status in (400, 403) and any(w in low for w in _QUOTA_WORDS)):
            return QuotaError(
                f"Pinata refused {action} ({label}){more}: the account is over its plan's "
                "limits; free space or upgrade the plan",
                backend="pinata",
            )
        if status == 401:
            return AuthError(
                f"Pinata rejected {config.credential_name} ({label or 401}){more}: "
                f"check {config.credential_env}",
                backend="pinata",
            )
        if status == 403:
            if reason == "API_KEY_REVOKED":
                hint = f"the key was revoked; create a new one and update {config.credential_env}"
            elif reason == "NO_SCOPES_FOUND" or "scope" in low:
                hint = (
                    "the key lacks the scope for this call; give it files read + write "
                    "(org:files:read, org:files:write)"
                    + (", or try PINATA_MODE=v3" if config.mode == "legacy" else "")
                )
            else:
                hint = f"check the key's permissions ({config.credential_env})"
            return AuthError(f"Pinata refused {action} ({label}){more}: {hint}", backend="pinata")
        if status == 404:
            return NotFoundError(f"pinata: {action}: not found ({label}){more}", backend="pinata")
        return None

    return classify
