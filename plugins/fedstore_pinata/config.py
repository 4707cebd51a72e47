"""Pinata settings (declared in :data:`SETTINGS`) and Pinata-specific error classification.

Settings (environment, ``.env``, or the ``[pinata]`` table of fedstore.toml:
``[pinata] jwt = "..."``):

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

plus the HTTP retry settings (``FEDSTORE_HTTP_ATTEMPTS``, ``FEDSTORE_HTTP_BACKOFF``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from fedstore.backends import Setting
from fedstore.backends.http import RETRY_SETTINGS, Classifier, Secret, display_url
from fedstore.errors import AuthError, BackendError, NotConfiguredError, NotFoundError, QuotaError

__all__ = ["SETTINGS", "PinataConfig", "credentials_reason", "pinata_classifier", "pinata_reason"]

DEFAULT_API_URL = "https://api.pinata.cloud"
DEFAULT_UPLOAD_URL = "https://uploads.pinata.cloud"
#: Pinata's SDK switches to resumable uploads above this size.
DEFAULT_TUS_THRESHOLD = 94_371_840
#: TUS chunk size (Pinata's SDK uses about 50 MiB).
DEFAULT_TUS_CHUNK = 50 * 1024 * 1024
#: Values of PINATA_UPLOAD_FORMAT.
UPLOAD_FORMATS = ("car", "file")
_QUOTA_WORDS = ("limit", "quota", "plan", "storage", "exceed", "insufficient")

JWT = Setting("PINATA_JWT", help="Pinata API JWT (preferred credential)", secret=True)
API_KEY = Setting("PINATA_API_KEY", help="Pinata API key (with PINATA_API_SECRET)", secret=True)
API_SECRET = Setting("PINATA_API_SECRET", help="Pinata API secret", secret=True)
MODE = Setting("PINATA_MODE", help="v3 (default with a JWT) or legacy (default with a key pair)")
API_URL = Setting("PINATA_API_URL", DEFAULT_API_URL, "Pinata API base URL")
UPLOAD_URL = Setting("PINATA_UPLOAD_URL", DEFAULT_UPLOAD_URL, "Pinata upload base URL")
GATEWAY_URL = Setting(
    "PINATA_GATEWAY_URL", help="dedicated gateway for downloads (https://<name>.mypinata.cloud)"
)
GATEWAY_TOKEN = Setting("PINATA_GATEWAY_TOKEN", help="sent as x-pinata-gateway-token", secret=True)
GROUP_ID = Setting("PINATA_GROUP_ID", help="optional v3 group for uploads")
RATE_LIMIT = Setting(
    "PINATA_RATE_LIMIT",
    "60",
    "client-side Pinata requests per minute (0: off)",
    kind="float",
    minimum=0,
    maximum=1_000_000,
)
TUS_THRESHOLD = Setting(
    "PINATA_TUS_THRESHOLD",
    str(DEFAULT_TUS_THRESHOLD),
    "bytes above which uploads are resumable (TUS)",
    kind="int",
    minimum=0,
)
TUS_CHUNK = Setting(
    "PINATA_TUS_CHUNK",
    str(DEFAULT_TUS_CHUNK),
    "TUS upload chunk size, bytes",
    kind="int",
    minimum=1024,
    maximum=5 * 1024**3,
)
UPLOAD_FORMAT = Setting(
    "PINATA_UPLOAD_FORMAT",
    "car",
    "v3 uploads up to the TUS threshold: car (fedstore's own CAR, same CID) or file",
)
#: Every setting the Pinata backend reads.
SETTINGS: tuple[Setting, ...] = (
    JWT,
    API_KEY,
    API_SECRET,
    MODE,
    API_URL,
    UPLOAD_URL,
    GATEWAY_URL,
    GATEWAY_TOKEN,
    GROUP_ID,
    RATE_LIMIT,
    TUS_THRESHOLD,
    TUS_CHUNK,
    UPLOAD_FORMAT,
    *RETRY_SETTINGS,
)


def credentials_reason(env: Mapping[str, str]) -> str | None:
    """Which credentials *env* sets (for the default chain), or None."""
    if JWT.is_set(env):
        return "PINATA_JWT is set"
    if API_KEY.is_set(env) and API_SECRET.is_set(env):
        return "PINATA_API_KEY and PINATA_API_SECRET are set"
    return None


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
        """Read :data:`SETTINGS` from *env*; NotConfiguredError when no credentials are set.

        Malformed or out-of-range numbers are a ConfigError naming the setting.
        """
        jwt = JWT.text(env)
        key = API_KEY.text(env)
        secret = API_SECRET.text(env)
        if credentials_reason(env) is None:
            raise NotConfiguredError(
                "pinata: set PINATA_JWT (v3 API) or PINATA_API_KEY + PINATA_API_SECRET (legacy)"
            )
        mode = MODE.text(env).lower() or ("v3" if jwt else "legacy")
        gateway = GATEWAY_URL.text(env)
        token = GATEWAY_TOKEN.text(env)
        return cls(
            jwt=Secret(jwt) if jwt else None,
            api_key=Secret(key) if key else None,
            api_secret=Secret(secret) if secret else None,
            mode=mode,
            api_url=_base_url(API_URL.text(env), API_URL.name, strip="/v3"),
            upload_url=_base_url(UPLOAD_URL.text(env), UPLOAD_URL.name, strip="/v3"),
            gateway_url=_base_url(gateway, GATEWAY_URL.name, strip="/ipfs") if gateway else None,
            gateway_token=Secret(token) if token else None,
            group_id=GROUP_ID.text(env) or None,
            rate_limit=RATE_LIMIT.number(env),
            tus_threshold=TUS_THRESHOLD.integer(env),
            tus_chunk=TUS_CHUNK.integer(env),
            upload_format=UPLOAD_FORMAT.text(env).lower(),
        )


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
