"""The Kubo backend's settings (``[kubo]`` table of fedstore.toml: ``api``, ``token``, ...)."""

from __future__ import annotations

from fedstore.backends import Setting
from fedstore.backends.http import RETRY_SETTINGS

__all__ = ["API", "FETCH_TIMEOUT", "IPFS_PATH", "PIN_TIMEOUT", "SETTINGS", "TOKEN"]

API = Setting(
    "FEDSTORE_KUBO_API",
    help="Kubo RPC API, e.g. http://127.0.0.1:5001 or /ip4/127.0.0.1/tcp/5001 "
    "(default: $IPFS_PATH/api, else 127.0.0.1:5001)",
)
TOKEN = Setting(
    "FEDSTORE_KUBO_TOKEN",
    help="bearer token for a protected Kubo RPC API (basic:USER:PASS for Basic auth)",
    secret=True,
)
FETCH_TIMEOUT = Setting(
    "FEDSTORE_KUBO_FETCH_TIMEOUT",
    "0",
    "seconds Kubo may search the network for a CID it lacks (0: local blocks only)",
    kind="duration",
    minimum=0.1,
    maximum=86400,
    off=0,
)
PIN_TIMEOUT = Setting(
    "FEDSTORE_KUBO_PIN_TIMEOUT",
    "60",
    "seconds a Kubo pin may take",
    kind="duration",
    minimum=0.1,
    maximum=86400,
)
IPFS_PATH = Setting(
    "IPFS_PATH",
    help="Kubo repository (its 'api' file locates the daemon); default ~/.ipfs",
    kind="path",
)

SETTINGS: tuple[Setting, ...] = (API, TOKEN, FETCH_TIMEOUT, PIN_TIMEOUT, IPFS_PATH, *RETRY_SETTINGS)
