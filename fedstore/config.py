"""Configuration: command-line flags > environment > ``.env`` file > ``fedstore.toml``.

Every setting has one name, the environment variable's (see :data:`VARIABLES`
and ``.env.example`` at the top of the repository, which lists them all).
The same name is used in every source:

* **flags** of a command (``fedstore node --dir D`` sets ``CHECKPOINT_DIR``);
* the **environment** of the process;
* a **``.env`` file**: ``./.env`` if present, or the file named by
  ``--env-file`` / ``FEDSTORE_ENV_FILE`` (then it must exist). Lines are
  ``NAME=value`` or ``export NAME=value``; ``#`` starts a comment line, or an
  inline comment after whitespace in an unquoted value; values may be single-
  or double-quoted (double quotes understand ``\\n``, ``\\t``, ``\\"`` and
  ``\\\\``). A malformed line is a :class:`~fedstore.errors.ConfigError`
  naming the file and line;
* **``fedstore.toml``**: ``./fedstore.toml`` if present, or the file named by
  ``--config`` / ``FEDSTORE_CONFIG``. Keys are the same names, case-insensitive;
  tables are flattened with ``_`` (``[pinata] jwt = "..."`` is ``PINATA_JWT``,
  ``[fedstore] backends = ["kubo", "filesystem"]`` is
  ``FEDSTORE_BACKENDS=kubo,filesystem``); lists become comma-separated text.

:func:`load_settings` merges the three non-flag sources into one
``dict[str, str]``; that mapping is what backends receive (so a Pinata JWT in
``.env`` reaches the Pinata plugin). :func:`load_node_config` adds the flags
and validates the node's own settings into a :class:`NodeConfig`. Values are
never logged; :class:`NodeConfig`'s repr omits the settings mapping, which
may hold secrets.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedstore.errors import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "MAX_INLINE_LIMIT",
    "ROLES",
    "VARIABLES",
    "NodeConfig",
    "Variable",
    "load_node_config",
    "load_settings",
    "parse_bool",
    "parse_env_file",
    "read_toml_settings",
]

ROLES = ("bootstrap", "trainer")
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
#: Largest inline payload allowed: leaves room for the envelope, signature and
#: protobuf framing under py-libp2p's 1 MiB per-message limit.
MAX_INLINE_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Variable:
    """One documented setting: its name, default (as text, "" = unset) and meaning."""

    name: str
    default: str
    help: str
    secret: bool = False


#: Every variable fedstore reads, in the order ``.env.example`` lists them.
VARIABLES: tuple[Variable, ...] = (
    # -- node -----------------------------------------------------------------------
    Variable("FEDSTORE_ROLE", "trainer", "node role: bootstrap or trainer (--role)"),
    Variable("CHECKPOINT_DIR", "", "node data directory (--dir); default ./checkpoints_<role>"),
    Variable(
        "FEDSTORE_LISTEN",
        DEFAULT_LISTEN,
        "listen multiaddr(s), comma-separated (--listen); tcp/0 picks a free port",
    ),
    Variable(
        "BOOTSTRAP_ADDR",
        "",
        "full multiaddr(s) /ip4/../tcp/../p2p/.. of peers to connect to at start (--bootstrap)",
    ),
    Variable("IS_CLOUD", "false", "true: advertise IP instead of the bound listen address"),
    Variable("IP", "", "public IP to advertise when IS_CLOUD is true"),
    Variable("FEDSTORE_HEARTBEAT", "0.5", "gossipsub heartbeat interval, seconds"),
    Variable(
        "FEDSTORE_REANNOUNCE_INTERVAL",
        "10",
        "seconds between re-announcements of this node's head on model-cids (0: never)",
    ),
    Variable("FEDSTORE_HEAD_TIMEOUT", "5", "seconds to wait for a peer's head answer"),
    Variable("FEDSTORE_CONNECT_TIMEOUT", "10", "seconds to wait when dialling a peer"),
    Variable(
        "FEDSTORE_INLINE_LIMIT",
        "786432",
        "largest payload sent inside a pubsub message; larger ones travel as a CID",
    ),
    Variable(
        "FEDSTORE_MAX_FETCH_SIZE",
        str(2 * 1024**3),
        "largest object (checkpoint or referenced update) a node fetches, bytes",
    ),
    Variable(
        "FEDSTORE_MAX_UPDATE_SIZE",
        str(256 * 1024**2),
        "largest payload a peer may send by reference on fed-learn (fetched into memory), bytes",
    ),
    Variable("FEDSTORE_PEER_RATE", "20", "messages per second accepted from one peer"),
    Variable("FEDSTORE_PEER_BURST", "40", "burst of messages accepted from one peer"),
    Variable(
        "FEDSTORE_ANNOUNCEMENTS_PER_PEER",
        "1000",
        "announcements kept in the catalog per sending peer (its newest rounds)",
    ),
    Variable("FEDSTORE_AUTO_SYNC", "false", "true: fetch every newer announced checkpoint at once"),
    Variable(
        "FEDSTORE_FEDERATION",
        "",
        "federation manifest (file or CID) this node is a member of (--federation); "
        "empty: an open federation anyone may join",
    ),
    Variable(
        "FEDSTORE_VERIFY",
        "full",
        "full: recompute every global model before adopting it; off: check its binding only",
    ),
    Variable("FEDSTORE_ENV_FILE", "", "path of the .env file to read (--env-file)"),
    Variable("FEDSTORE_CONFIG", "", "path of the fedstore.toml file to read (--config)"),
    # -- store and catalog ------------------------------------------------------------
    Variable(
        "FEDSTORE_CATALOG_AUTO_UPGRADE",
        "true",
        "false: refuse to open a catalog with an older schema instead of upgrading it",
    ),
    Variable(
        "FEDSTORE_MAX_CHECKPOINT_BYTES",
        str(8 << 30),
        "largest decoded checkpoint accepted (decompression-bomb guard), bytes",
    ),
    # -- storage backends -------------------------------------------------------------
    Variable(
        "FEDSTORE_BACKENDS",
        "",
        "backend chain, comma-separated (--backends); default: pinata,kubo when "
        "configured, then filesystem",
    ),
    Variable(
        "FEDSTORE_FS_ROOT",
        "",
        "filesystem backend root; default $XDG_DATA_HOME/fedstore/objects",
    ),
    Variable("XDG_DATA_HOME", "", "base of the filesystem backend's default root"),
    Variable("FEDSTORE_HTTP_ATTEMPTS", "4", "attempts per request of the HTTP backends"),
    Variable("FEDSTORE_HTTP_BACKOFF", "0.5", "first retry delay of the HTTP backends, seconds"),
    Variable("FEDSTORE_KUBO_API", "", "Kubo RPC API, e.g. http://127.0.0.1:5001"),
    Variable("FEDSTORE_KUBO_TOKEN", "", "bearer token for a protected Kubo RPC API", secret=True),
    Variable(
        "FEDSTORE_KUBO_FETCH_TIMEOUT",
        "0",
        "seconds Kubo may search the network for a CID it lacks (0: local blocks only)",
    ),
    Variable("FEDSTORE_KUBO_PIN_TIMEOUT", "60", "seconds a Kubo pin may take"),
    Variable("IPFS_PATH", "", "Kubo repository (its 'api' file locates the daemon)"),
    Variable("PINATA_JWT", "", "Pinata API JWT (preferred credential)", secret=True),
    Variable("PINATA_API_KEY", "", "Pinata API key (with PINATA_API_SECRET)", secret=True),
    Variable("PINATA_API_SECRET", "", "Pinata API secret", secret=True),
    Variable("PINATA_MODE", "", "v3 (default with a JWT) or legacy (default with a key pair)"),
    Variable("PINATA_API_URL", "https://api.pinata.cloud", "Pinata API base URL"),
    Variable("PINATA_UPLOAD_URL", "https://uploads.pinata.cloud", "Pinata upload base URL"),
    Variable(
        "PINATA_GATEWAY_URL", "", "dedicated gateway for downloads (https://<name>.mypinata.cloud)"
    ),
    Variable("PINATA_GATEWAY_TOKEN", "", "sent as x-pinata-gateway-token", secret=True),
    Variable("PINATA_GROUP_ID", "", "optional v3 group for uploads"),
    Variable("PINATA_RATE_LIMIT", "60", "client-side Pinata requests per minute (0: off)"),
    Variable("PINATA_TUS_THRESHOLD", "94371840", "bytes above which uploads are resumable (TUS)"),
    Variable("PINATA_TUS_CHUNK", str(50 * 1024 * 1024), "TUS upload chunk size, bytes"),
    Variable(
        "PINATA_UPLOAD_FORMAT",
        "car",
        "v3 uploads up to the TUS threshold: car (fedstore's own CAR, same CID) or file",
    ),
)


def parse_bool(text: str, *, name: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean (use true or false)")


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}


def _unquote(value: str, *, where: str) -> str:
    if value[:1] == '"':
        out: list[str] = []
        i = 1
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value):
                out.append(_ESCAPES.get(value[i + 1], "\\" + value[i + 1]))
                i += 2
                continue
            if ch == '"':
                rest = value[i + 1 :].strip()
                if rest and not rest.startswith("#"):
                    raise ConfigError(f"{where}: text after closing quote")
                return "".join(out)
            out.append(ch)
            i += 1
        raise ConfigError(f"{where}: unterminated double quote")
    if value[:1] == "'":
        end = value.find("'", 1)
        if end < 0:
            raise ConfigError(f"{where}: unterminated single quote")
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ConfigError(f"{where}: text after closing quote")
        return value[1:end]
    for marker in (" #", "\t#"):
        cut = value.find(marker)
        if cut >= 0:
            value = value[:cut]
    return value.strip()


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file (format in the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror or exc}") from exc
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        where = f"{path}:{lineno}"
        if not sep or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ConfigError(f"{where}: expected NAME=value")
        out[name] = _unquote(value.strip(), where=where)
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str], path: Path) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), sub, out, path)
        return
    name = prefix.upper()
    if isinstance(value, bool):
        out[name] = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        out[name] = str(value)
    elif isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        out[name] = ",".join(str(v) for v in value)
    else:
        raise ConfigError(f"{path}: {prefix} has a value of unsupported type")


def read_toml_settings(path: Path) -> dict[str, str]:
    """Read ``fedstore.toml`` into flat ``NAME -> text`` settings."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    out: dict[str, str] = {}
    _flatten("", doc, out, Path(path))
    return out


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = None,
    toml_file: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
) -> dict[str, str]:
    """Merge ``fedstore.toml`` < ``.env`` < *environ* into one mapping.

    *env_file*/*toml_file* (or ``FEDSTORE_ENV_FILE``/``FEDSTORE_CONFIG``)
    name files that must exist; otherwise ``.env`` and ``fedstore.toml`` in
    *cwd* (default: the current directory) are read if present.
    """
    environ = dict(os.environ if environ is None else environ)
    base = Path.cwd() if cwd is None else cwd
    merged: dict[str, str] = {}
    toml_path = toml_file or environ.get("FEDSTORE_CONFIG")
    if toml_path:
        merged.update(read_toml_settings(Path(toml_path)))
    elif (base / "fedstore.toml").is_file():
        merged.update(read_toml_settings(base / "fedstore.toml"))
    env_path = env_file or environ.get("FEDSTORE_ENV_FILE") or merged.get("FEDSTORE_ENV_FILE")
    if env_path:
        merged.update(parse_env_file(Path(env_path)))
    elif (base / ".env").is_file():
        merged.update(parse_env_file(base / ".env"))
    merged.update(environ)
    return merged


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.replace("\n", ",").split(",") if p.strip())


@dataclass(frozen=True)
class NodeConfig:
    """Validated settings of one node. Build with :func:`load_node_config`."""

    role: str = "trainer"
    data_dir: Path = Path("checkpoints_trainer")
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    announce_ip: str | None = None
    #: Backend names in order; None = the registry's default chain.
    backends: tuple[str, ...] | None = None
    heartbeat_interval: float = 0.5
    reannounce_interval: float = 10.0
    head_timeout: float = 5.0
    connect_timeout: float = 10.0
    inline_limit: int = 786432
    max_fetch_size: int = 2 * 1024**3
    max_update_size: int = 256 * 1024**2
    peer_rate: float = 20.0
    peer_burst: int = 40
    announcements_per_peer: int = 1000
    auto_sync: bool = False
    #: Federation manifest (file path or CID); None: open federation.
    federation: str | None = None
    #: Recompute every global model before adopting it (FEDSTORE_VERIFY=full).
    verify: bool = True
    #: Merged settings handed to storage backends (may hold secrets: not in repr).
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)


def _number(settings: Mapping[str, str], name: str, kind: type, minimum: float) -> Any:
    default = next(v.default for v in VARIABLES if v.name == name)
    text = settings.get(name, "").strip() or default
    try:
        value = kind(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={text!r} is not a {kind.__name__}") from exc
    if value < minimum:
        raise ConfigError(f"{name}={text!r} must be at least {minimum}")
    return value


def _verify_mode(text: str) -> bool:
    mode = text.strip().lower() or "full"
    if mode not in ("full", "off"):
        raise ConfigError(f"FEDSTORE_VERIFY={text!r}: expected full or off")
    return mode == "full"


def load_node_config(
    flags: Mapping[str, str | None] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    toml_file: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
) -> NodeConfig:
    """Build a :class:`NodeConfig`. *flags* maps variable names to flag values (None = unset)."""
    settings = load_settings(environ, env_file=env_file, toml_file=toml_file, cwd=cwd)
    settings.update({k: v for k, v in (flags or {}).items() if v is not None})
    role = settings.get("FEDSTORE_ROLE", "").strip() or "trainer"
    if role not in ROLES:
        raise ConfigError(f"FEDSTORE_ROLE={role!r}: expected one of {', '.join(ROLES)}")
    base = Path.cwd() if cwd is None else cwd
    data_dir = Path(settings.get("CHECKPOINT_DIR", "").strip() or f"checkpoints_{role}")
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    listen = _split(settings.get("FEDSTORE_LISTEN", "")) or (DEFAULT_LISTEN,)
    is_cloud = parse_bool(settings.get("IS_CLOUD", ""), name="IS_CLOUD")
    ip = settings.get("IP", "").strip() or None
    if is_cloud and not ip:
        raise ConfigError("IS_CLOUD is true but IP is not set: set IP to the public address")
    backends_text = settings.get("FEDSTORE_BACKENDS", "").strip()
    inline_limit = _number(settings, "FEDSTORE_INLINE_LIMIT", int, 0)
    if inline_limit > MAX_INLINE_LIMIT:
        raise ConfigError(
            f"FEDSTORE_INLINE_LIMIT={inline_limit} is above {MAX_INLINE_LIMIT}: py-libp2p drops "
            "pubsub messages over 1 MiB without a word; larger payloads travel as CIDs anyway"
        )
    return NodeConfig(
        role=role,
        data_dir=data_dir,
        listen=listen,
        bootstrap=_split(settings.get("BOOTSTRAP_ADDR", "")),
        announce_ip=ip if is_cloud else None,
        backends=_split(backends_text) if backends_text else None,
        heartbeat_interval=_number(settings, "FEDSTORE_HEARTBEAT", float, 0.05),
        reannounce_interval=_number(settings, "FEDSTORE_REANNOUNCE_INTERVAL", float, 0.0),
        head_timeout=_number(settings, "FEDSTORE_HEAD_TIMEOUT", float, 0.1),
        connect_timeout=_number(settings, "FEDSTORE_CONNECT_TIMEOUT", float, 0.1),
        inline_limit=inline_limit,
        max_fetch_size=_number(settings, "FEDSTORE_MAX_FETCH_SIZE", int, 1),
        max_update_size=_number(settings, "FEDSTORE_MAX_UPDATE_SIZE", int, 1),
        peer_rate=_number(settings, "FEDSTORE_PEER_RATE", float, 0.001),
        peer_burst=_number(settings, "FEDSTORE_PEER_BURST", int, 1),
        announcements_per_peer=_number(settings, "FEDSTORE_ANNOUNCEMENTS_PER_PEER", int, 1),
        auto_sync=parse_bool(settings.get("FEDSTORE_AUTO_SYNC", ""), name="FEDSTORE_AUTO_SYNC"),
        federation=settings.get("FEDSTORE_FEDERATION", "").strip() or None,
        verify=_verify_mode(settings.get("FEDSTORE_VERIFY", "")),
        settings=settings,
    )
