"""Where the Kubo RPC API is: ``FEDSTORE_KUBO_API``, else ``$IPFS_PATH/api``, else the default.

Accepted spellings: a multiaddr (``/ip4/127.0.0.1/tcp/5001``,
``/dns4/ipfs.example/tcp/443/https``), a URL (``http://127.0.0.1:5001``, with
or without a trailing ``/api/v0``) or ``host:port``. The result is always a
base URL without a trailing slash, e.g. ``http://127.0.0.1:5001``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from fedstore.backends.http import display_url
from fedstore.errors import ConfigError
from fedstore_kubo.settings import API, IPFS_PATH

__all__ = ["DEFAULT_API_URL", "api_file", "api_url_from_env", "api_url_from_text"]

DEFAULT_API_URL = "http://127.0.0.1:5001"
#: Kubo refuses to write an API file larger than this.
_MAX_API_FILE = 2048


def _multiaddr_to_url(text: str) -> str:
    parts = [p for p in text.strip().split("/") if p]
    if len(parts) < 4:
        raise ConfigError(f"Kubo API multiaddr {text!r} is incomplete; expected /ip4/HOST/tcp/PORT")
    proto, host, transport, port = parts[:4]
    rest = parts[4:]
    if proto == "ip6":
        host = f"[{host}]"
    elif proto not in ("ip4", "dns", "dns4", "dns6"):
        raise ConfigError(
            f"Kubo API multiaddr {text!r}: {proto!r} is not supported "
            "(use /ip4, /ip6 or /dns… with /tcp; unix sockets are not supported)"
        )
    if transport != "tcp" or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"Kubo API multiaddr {text!r} needs /tcp/PORT")
    scheme = "http"
    if rest in (["https"], ["tls", "http"], ["tls"]):
        scheme = "https"
    elif rest not in ([], ["http"]):
        raise ConfigError(f"Kubo API multiaddr {text!r}: unexpected suffix /{'/'.join(rest)}")
    return f"{scheme}://{host}:{port}"


def api_url_from_text(text: str) -> str:
    """Normalise a multiaddr, URL or ``host:port`` into a base URL. Raises ConfigError."""
    text = text.strip()
    if not text:
        raise ConfigError("Kubo API address is empty")
    if text.startswith("/"):
        return _multiaddr_to_url(text)
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"Kubo API address {display_url(text)!r} is not an http(s) URL or a multiaddr"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "do not put credentials in the Kubo API address; set FEDSTORE_KUBO_TOKEN instead"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/api/v0"):
        path = path[: -len("/api/v0")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def api_file(env: Mapping[str, str]) -> Path:
    """``$IPFS_PATH/api``, else ``~/.ipfs/api`` (``HOME`` from *env* if set there)."""
    ipfs_path = IPFS_PATH.text(env) or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".ipfs"
    )
    return Path(ipfs_path).expanduser() / "api"


def api_url_from_env(env: Mapping[str, str]) -> tuple[str, str]:
    """Return ``(base_url, where_it_came_from)`` following Kubo's own discovery order."""
    if API.is_set(env):
        return api_url_from_text(API.text(env)), API.name
    api_file_path = api_file(env)
    try:
        with open(api_file_path, encoding="utf-8") as f:
            text = f.read(_MAX_API_FILE + 1)
    except OSError:
        return DEFAULT_API_URL, "default"
    if len(text) > _MAX_API_FILE:
        raise ConfigError(
            f"{api_file_path} is larger than {_MAX_API_FILE} bytes; not a Kubo API file"
        )
    return api_url_from_text(text), str(api_file_path)
