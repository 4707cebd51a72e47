"""fedstore's exception tree.

Every error fedstore raises on purpose derives from :class:`FedstoreError`.
Third-party exceptions (httpx, SQLAlchemy, zstandard, libp2p, OS errors from
plugins) are translated at the boundary into the most specific class below,
chained with ``raise ... from exc`` so the cause stays visible in a traceback.
Messages are written for the person running fedstore: they say what failed and
what to do about it, and they never contain secrets (tokens, JWTs, keys).

Like httpx's errors carry their ``request`` and ``response``, every fedstore
error carries structured context for code that handles it, never parsed out
of the message: ``cid`` (the object concerned), ``backend`` (the storage
backend that failed) and ``attempts`` (for an operation across a backend
chain: every backend tried, in order, each an :class:`Attempt` holding the
error it raised). Each is ``None`` or empty when unknown. The backend chain
fills in ``cid`` and ``backend`` on errors a backend raised without them.
Callers classify errors with ``isinstance``, never by class name.

::

    FedstoreError
    ├── ConfigError                 bad or missing configuration
    │   ├── StrategyError           strategy unknown, plugin broken, or bad settings
    │   ├── AppError                an app is missing, malformed, or its code failed
    │   └── ManifestError           a federation manifest is malformed or badly signed
    ├── FormatError                 checkpoint bytes are not a valid checkpoint
    │   └── SizeLimitError          ...or would decode to more than allowed
    ├── InvalidCIDError             a string is not a CID fedstore understands
    ├── IntegrityError              bytes do not match the CID they were fetched by
    │   └── VerificationError       a global model is not the aggregate of its updates
    ├── CatalogError                the SQLite catalog failed or is out of date
    │   └── RoundConflictError      the round already has a different checkpoint
    ├── CheckpointNotFoundError     no local checkpoint for that round
    ├── ProtocolError               a peer sent something malformed
    ├── NetworkError                a peer could not be reached, or the p2p layer failed
    └── BackendError                a storage backend failed
        ├── BackendLoadError        plugin unknown or failed to import
        ├── NotConfiguredError      backend lacks the settings it needs
        ├── NotFoundError           backend does not have that CID
        ├── UnavailableError        backend unreachable, timed out or 5xx
        │   └── RateLimitedError    backend said 429; ``retry_after`` seconds
        ├── AuthError               credentials rejected (401/403)
        ├── QuotaError              account is out of space or plan limits
        └── CIDMismatchError        backend stored the data under another CID
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AppError",
    "Attempt",
    "AuthError",
    "BackendError",
    "BackendLoadError",
    "CIDMismatchError",
    "CatalogError",
    "CheckpointNotFoundError",
    "ConfigError",
    "FedstoreError",
    "FormatError",
    "IntegrityError",
    "InvalidCIDError",
    "ManifestError",
    "NetworkError",
    "NotConfiguredError",
    "NotFoundError",
    "ProtocolError",
    "QuotaError",
    "RateLimitedError",
    "RoundConflictError",
    "SizeLimitError",
    "StrategyError",
    "UnavailableError",
    "VerificationError",
]


class FedstoreError(Exception):
    """Root of every error fedstore raises on purpose.

    *cid*, *backend* and *attempts* are the structured context described in
    the module docstring; the message is for people, the context for code.
    """

    def __init__(
        self,
        message: str = "",
        *,
        cid: str | None = None,
        backend: str | None = None,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        super().__init__(message)
        self.cid = cid
        self.backend = backend
        self.attempts: tuple[Attempt, ...] = tuple(attempts)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend's outcome in one operation of a backend chain (a write or a read).

    ``error`` is the fedstore error the backend's attempt ended with (a
    foreign exception is translated first; see
    :class:`fedstore.backends.BackendChain`), ``None`` when it succeeded;
    ``backend_ref`` is the backend's handle for a stored object (e.g.
    Pinata's file id), if any.
    """

    backend: str
    error: FedstoreError | None = None
    backend_ref: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        """``ok``, or the error's message (its class name when it has none)."""
        if self.error is None:
            return "ok"
        return str(self.error) or type(self.error).__name__


class ConfigError(FedstoreError):
    """Configuration is missing or malformed."""


class StrategyError(ConfigError):
    """A strategy name is unknown, its plugin failed to load, or its settings are invalid.

    ``strategy`` names it when known.
    """

    def __init__(self, message: str, *, strategy: str | None = None) -> None:
        super().__init__(message)
        self.strategy = strategy


class AppError(ConfigError):
    """An app (:class:`fedstore.app.App`) cannot be loaded, is malformed, or its code failed.

    The message names the app and the piece concerned (``App.train``, the
    module tried, the round); a failure inside the app's own code keeps the
    original exception as ``__cause__``.
    """


class ManifestError(ConfigError):
    """A federation manifest is malformed, not canonical, or its signature does not verify."""


class FormatError(FedstoreError):
    """Bytes are not a valid fedstore checkpoint (bad magic, truncated, lying header...)."""


class SizeLimitError(FormatError):
    """Decoding would exceed a configured size cap; nothing was allocated for it."""


class InvalidCIDError(FedstoreError, ValueError):
    """A string is not a CID fedstore can parse or verify."""


class IntegrityError(FedstoreError):
    """Data does not hash to the CID it was requested by; it was discarded."""


class VerificationError(IntegrityError):
    """A global model is not what its round's signed updates aggregate to; it was refused.

    ``cid`` is the announced model, ``expected`` the CID the verifier computed
    (None when it could not recompute, e.g. a listed update failed its checks).
    ``unavailable``: it could not be recomputed because listed updates could
    not be fetched (nothing shows a lie yet; a member may try again).
    """

    def __init__(
        self,
        message: str,
        *,
        cid: str | None = None,
        expected: str | None = None,
        unavailable: bool = False,
    ):
        super().__init__(message, cid=cid)
        self.expected = expected
        self.unavailable = unavailable


class CatalogError(FedstoreError):
    """The SQLite catalog could not be opened, migrated or queried."""


class RoundConflictError(CatalogError):
    """The round already has a checkpoint with a different CID (and replace was not asked).

    Defined here rather than beside the catalog so code that only catches it
    (the command line) does not import SQLAlchemy.
    """


class CheckpointNotFoundError(FedstoreError, LookupError):
    """No local checkpoint exists for the requested round."""


class ProtocolError(FedstoreError):
    """A peer sent a message that does not follow fedstore's wire format."""


class NetworkError(FedstoreError):
    """A peer could not be reached or did not answer in time, or the p2p host failed."""


class BackendError(FedstoreError):
    """A storage backend failed. ``backend`` names it when known."""


class BackendLoadError(BackendError):
    """A backend name is unknown, or its plugin failed to import or construct."""


class NotConfiguredError(BackendError):
    """The backend is installed but lacks settings it needs (e.g. no PINATA_JWT)."""


class NotFoundError(BackendError, LookupError):
    """The backend does not hold the requested CID."""


class UnavailableError(BackendError):
    """The backend could not be reached, timed out, or answered 5xx."""


class RateLimitedError(UnavailableError):
    """The backend asked us to slow down (HTTP 429)."""

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float | None = None,
        cid: str | None = None,
        backend: str | None = None,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        super().__init__(message, cid=cid, backend=backend, attempts=attempts)
        self.retry_after = retry_after


class AuthError(BackendError):
    """The backend rejected our credentials (HTTP 401/403). Not retried."""


class QuotaError(BackendError):
    """The backend account is out of storage or over its plan's limits."""


class CIDMismatchError(BackendError):
    """A backend reported a CID different from the one fedstore computed locally."""
