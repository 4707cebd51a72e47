"""Configuration: the core's own settings, and a node's validated :class:`NodeConfig`.

Precedence: command-line flags > environment > ``.env`` file > ``fedstore.toml``
(reading and merging: :mod:`fedstore.config_sources`). Every setting has one
name, the environment variable's. The core declares its own here
(:data:`CORE_SETTINGS`); each backend plugin declares its own settings on its
class (:attr:`fedstore.backends.StorageBackend.settings`), so
``.env.example``, ``fedstore backends`` and ``fedstore config show`` list
what is installed.

The node's older unprefixed names are aliases of the ``FEDSTORE_`` names:
``CHECKPOINT_DIR`` = ``FEDSTORE_DIR``, ``BOOTSTRAP_ADDR`` =
``FEDSTORE_BOOTSTRAP``, ``IS_CLOUD`` = ``FEDSTORE_IS_CLOUD``, ``IP`` =
``FEDSTORE_IP``. The prefixed name wins wherever it is set; an alias counts
only when its prefixed name is set nowhere.

:func:`load_settings` merges the non-flag sources into one ``dict[str, str]``;
that mapping is what backends receive (so a Pinata JWT in ``.env`` reaches the
Pinata plugin). :func:`load_node_config` adds the flags and validates every
core setting into a :class:`NodeConfig`: a malformed, non-finite or
out-of-range number is a one-line :class:`~fedstore.errors.ConfigError`
naming the setting. Unknown names in ``.env`` and ``fedstore.toml`` are
reported as one warning line each. Values are never logged; :class:`NodeConfig`'s
repr omits the settings mapping, which may hold secrets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from fedstore.backends.settings import Setting
from fedstore.config_sources import (
    ResolvedSettings,
    SettingsCatalog,
    parse_env_file,
    read_toml,
    resolve,
    toml_settings,
)
from fedstore.errors import ConfigError

__all__ = [
    "CORE_GROUPS",
    "CORE_SECTIONS",
    "CORE_SETTINGS",
    "FEDERATION_SETTINGS",
    "FEDERATION_TABLE",
    "DEFAULT_LISTEN",
    "MAX_INLINE_LIMIT",
    "ROLES",
    "NodeConfig",
    "Setting",
    "core_setting",
    "core_table",
    "load_node_config",
    "load_settings",
    "parse_bool",
    "parse_env_file",
    "read_toml_settings",
    "resolve_settings",
    "settings_catalog",
    "validate_core_settings",
]

log = logging.getLogger(__name__)

ROLES = ("bootstrap", "trainer")
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
#: Largest inline payload allowed: leaves room for the envelope, signature and
#: protobuf framing under py-libp2p's 1 MiB per-message limit.
MAX_INLINE_LIMIT = 1_000_000

ROLE = Setting(
    "FEDSTORE_ROLE", "trainer", "node role: bootstrap or trainer (--role)", choices=ROLES
)
DIR = Setting(
    "FEDSTORE_DIR",
    help="data directory of the node and of every command (--dir); default ./fedstore-data",
    aliases=("CHECKPOINT_DIR",),
    kind="path",
)
LISTEN = Setting(
    "FEDSTORE_LISTEN",
    DEFAULT_LISTEN,
    "listen multiaddr(s), comma-separated (--listen); tcp/0 picks a free port",
)
ANNOUNCE = Setting(
    "FEDSTORE_ANNOUNCE",
    help="multiaddr(s) peers should dial, comma-separated (--announce), e.g. "
    "/ip4/203.0.113.7/tcp/4001 or /dns4/host.example (bound port added); default: the bound "
    "addresses, 0.0.0.0 replaced by this host's interface addresses",
)
BOOTSTRAP = Setting(
    "FEDSTORE_BOOTSTRAP",
    help="full multiaddr(s) /ip4/../tcp/../p2p/.. of peers to connect to at start (--bootstrap)",
    aliases=("BOOTSTRAP_ADDR",),
)
IS_CLOUD = Setting(
    "FEDSTORE_IS_CLOUD",
    "false",
    "true: advertise FEDSTORE_IP instead of the bound listen address",
    aliases=("IS_CLOUD",),
    kind="bool",
)
IP = Setting(
    "FEDSTORE_IP", help="public IP to advertise when FEDSTORE_IS_CLOUD is true", aliases=("IP",)
)
HEARTBEAT = Setting(
    "FEDSTORE_HEARTBEAT",
    "0.5",
    "gossipsub heartbeat interval, seconds",
    kind="duration",
    minimum=0.05,
    maximum=60,
)
REANNOUNCE_INTERVAL = Setting(
    "FEDSTORE_REANNOUNCE_INTERVAL",
    "10",
    "seconds between re-announcements of this node's head on model-cids (0: never)",
    kind="duration",
    minimum=0.1,
    maximum=86400,
    off=0,
)
HEAD_TIMEOUT = Setting(
    "FEDSTORE_HEAD_TIMEOUT",
    "5",
    "seconds to wait for a peer's head answer",
    kind="duration",
    minimum=0.1,
    maximum=3600,
)
CONNECT_TIMEOUT = Setting(
    "FEDSTORE_CONNECT_TIMEOUT",
    "10",
    "seconds to wait when dialling a peer",
    kind="duration",
    minimum=0.1,
    maximum=3600,
)
INLINE_LIMIT = Setting(
    "FEDSTORE_INLINE_LIMIT",
    "786432",
    "largest payload sent inside a pubsub message; larger ones travel as a CID",
    kind="int",
    minimum=0,
    maximum=MAX_INLINE_LIMIT,
)
MAX_FETCH_SIZE = Setting(
    "FEDSTORE_MAX_FETCH_SIZE",
    str(2 * 1024**3),
    "largest object (checkpoint or referenced update) a node fetches, bytes",
    kind="int",
    minimum=1,
)
MAX_UPDATE_SIZE = Setting(
    "FEDSTORE_MAX_UPDATE_SIZE",
    str(256 * 1024**2),
    "largest payload a peer may send by reference on fed-learn (fetched into memory), bytes",
    kind="int",
    minimum=1,
)
PEER_RATE = Setting(
    "FEDSTORE_PEER_RATE",
    "20",
    "messages per second accepted from one peer",
    kind="float",
    minimum=0.001,
    maximum=1_000_000,
)
PEER_BURST = Setting(
    "FEDSTORE_PEER_BURST",
    "40",
    "burst of messages accepted from one peer",
    kind="int",
    minimum=1,
    maximum=1_000_000,
)
ANNOUNCEMENTS_PER_PEER = Setting(
    "FEDSTORE_ANNOUNCEMENTS_PER_PEER",
    "1000",
    "announcements kept in the catalog per sending peer (its newest rounds)",
    kind="int",
    minimum=1,
    maximum=10_000_000,
)
AUTO_SYNC = Setting(
    "FEDSTORE_AUTO_SYNC",
    "false",
    "true: fetch every newer announced checkpoint at once",
    kind="bool",
)
FEDERATION = Setting(
    "FEDSTORE_FEDERATION",
    help="federation manifest (file or CID) this node is a member of (--federation); "
    "unset: an open federation anyone may join",
)
VERIFY = Setting(
    "FEDSTORE_VERIFY",
    "full",
    "full: recompute every global model before adopting it; off: check its binding only",
    choices=("full", "off"),
)
ENV_FILE = Setting(
    "FEDSTORE_ENV_FILE", help="path of the .env file to read (--env-file)", kind="path"
)
CONFIG_FILE = Setting(
    "FEDSTORE_CONFIG", help="path of the fedstore.toml file to read (--config)", kind="path"
)
CATALOG_AUTO_UPGRADE = Setting(
    "FEDSTORE_CATALOG_AUTO_UPGRADE",
    "true",
    "false: refuse to open a catalog with an older schema instead of upgrading it",
    kind="bool",
)
MAX_CHECKPOINT_BYTES = Setting(
    "FEDSTORE_MAX_CHECKPOINT_BYTES",
    str(8 << 30),
    "largest decoded checkpoint accepted (decompression-bomb guard), bytes",
    kind="int",
    minimum=0,
)
BACKENDS = Setting(
    "FEDSTORE_BACKENDS",
    help="backend chain, comma-separated (--backends); default: the installed backends that "
    "detect their configuration ('fedstore backends' shows the chain and why)",
)

# -- [federation]: fedstore aggregate | train | simulate ----------------------------------
APP = Setting(
    "FEDSTORE_APP",
    help="the app to run: MODULE:OBJ or path/to/file.py:OBJ (--app)",
)
APP_CONFIG = Setting(
    "FEDSTORE_APP_CONFIG",
    help="keyword arguments for an app factory, KEY=VALUE comma-separated (--app-config)",
)
ROUNDS = Setting(
    "FEDSTORE_ROUNDS",
    help="rounds to run (--rounds); default: the app's",
    kind="int",
    minimum=1,
    maximum=1_000_000,
)
QUORUM = Setting(
    "FEDSTORE_QUORUM",
    help="updates that close a round: N, or N,ROUND:M (--quorum); default: the app's",
)
MIN_UPDATES = Setting(
    "FEDSTORE_MIN_UPDATES",
    help="fewest updates a round closes with after its timeout (--min-updates); default: the app's",
    kind="int",
    minimum=1,
    maximum=1_000_000,
)
ROUND_TIMEOUT = Setting(
    "FEDSTORE_ROUND_TIMEOUT",
    help="seconds a round waits for its quorum (--round-timeout); default: the app's",
    kind="duration",
    minimum=0.1,
    maximum=86400,
)
STRATEGY = Setting(
    "FEDSTORE_STRATEGY",
    help="aggregation strategy by name (--strategy); default: the app's",
)
STRATEGY_SETTINGS = Setting(
    "FEDSTORE_STRATEGY_SETTINGS",
    help="the strategy's settings, KEY=VALUE comma-separated (--strategy-setting)",
)
UPDATE_ENCODING = Setting(
    "FEDSTORE_UPDATE_ENCODING",
    help="how trainers send updates: float32, float16, int8[:BLOCK], topk:FRACTION "
    "(--update-encoding); default: the app's",
)
TRAINERS = Setting(
    "FEDSTORE_TRAINERS",
    help="trainers in the federation: simulate starts this many; a trainer's app sees it "
    "(--trainers)",
    kind="int",
    minimum=1,
    maximum=10_000,
)
TRAINER_INDEX = Setting(
    "FEDSTORE_TRAINER_INDEX",
    "1",
    "which trainer this is, 1..FEDSTORE_TRAINERS, for apps that split data (--trainer-index)",
    kind="int",
    minimum=1,
    maximum=10_000,
)
IDLE_TIMEOUT = Setting(
    "FEDSTORE_IDLE_TIMEOUT",
    "60",
    "a trainer gives up after this many seconds without a message from its aggregator",
    kind="duration",
    minimum=1,
    maximum=86400,
)

#: fedstore.toml table of the federation settings (``[federation] rounds = 10``).
FEDERATION_TABLE = "federation"
FEDERATION_SETTINGS: tuple[Setting, ...] = (
    APP,
    APP_CONFIG,
    ROUNDS,
    QUORUM,
    MIN_UPDATES,
    ROUND_TIMEOUT,
    STRATEGY,
    STRATEGY_SETTINGS,
    UPDATE_ENCODING,
    TRAINERS,
    TRAINER_INDEX,
    IDLE_TIMEOUT,
)

#: The core's settings in groups, in the order ``.env.example`` lists them.
CORE_GROUPS: tuple[tuple[str, tuple[Setting, ...]], ...] = (
    (
        "node",
        (
            ROLE,
            DIR,
            LISTEN,
            ANNOUNCE,
            BOOTSTRAP,
            IS_CLOUD,
            IP,
            HEARTBEAT,
            REANNOUNCE_INTERVAL,
            HEAD_TIMEOUT,
            CONNECT_TIMEOUT,
            INLINE_LIMIT,
            MAX_FETCH_SIZE,
            MAX_UPDATE_SIZE,
            PEER_RATE,
            PEER_BURST,
            ANNOUNCEMENTS_PER_PEER,
            AUTO_SYNC,
            FEDERATION,
            VERIFY,
            ENV_FILE,
            CONFIG_FILE,
        ),
    ),
    ("store and catalog", (CATALOG_AUTO_UPGRADE, MAX_CHECKPOINT_BYTES)),
    ("backend chain", (BACKENDS,)),
    ("federation", FEDERATION_SETTINGS),
)
#: Core settings kept in a ``fedstore.toml`` table of their own, by table name
#: (the others are in ``[fedstore]``).
CORE_SECTIONS: dict[str, tuple[Setting, ...]] = {FEDERATION_TABLE: FEDERATION_SETTINGS}
#: Every setting the core reads (plugins declare theirs on their backend class).
CORE_SETTINGS: tuple[Setting, ...] = tuple(s for _, group in CORE_GROUPS for s in group)


def parse_bool(text: str, *, name: str) -> bool:
    """``true/yes/on/1`` or ``false/no/off/0/""``; ConfigError naming *name* otherwise."""
    return Setting(name, kind="bool").flag({name: text})


# -- sources --------------------------------------------------------------------------


def _plugin_declarations() -> tuple[list[str], Callable[[str], Sequence[Setting]]]:
    from fedstore.backends.registry import available_backends, backend_settings

    return list(available_backends()), backend_settings


def settings_catalog() -> SettingsCatalog:
    """The core's settings plus every installed backend's (each plugin imported on demand)."""
    return SettingsCatalog(CORE_SETTINGS, _plugin_declarations, sections=CORE_SECTIONS)


def resolve_settings(
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[str, str | None] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    toml_file: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
    catalog: SettingsCatalog | None = None,
    report: bool = True,
) -> ResolvedSettings:
    """Merge every source with provenance (see :func:`fedstore.config_sources.resolve`).

    With *report* the warnings (unknown names) are logged, one line each.
    """
    resolved = resolve(
        catalog or settings_catalog(),
        environ,
        flags=flags,
        env_file=env_file,
        toml_file=toml_file,
        cwd=cwd,
    )
    if report:
        for line in resolved.warnings:
            log.warning("%s", line)
    return resolved


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
    return resolve_settings(environ, env_file=env_file, toml_file=toml_file, cwd=cwd).values


def read_toml_settings(path: Path) -> dict[str, str]:
    """Read ``fedstore.toml`` into flat ``NAME -> text`` settings (unknown names logged)."""
    values, _where, warnings = toml_settings(read_toml(Path(path)), Path(path), settings_catalog())
    for line in warnings:
        log.warning("%s", line)
    return values


# -- the node -------------------------------------------------------------------------


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.replace("\n", ",").split(",") if p.strip())


#: NodeConfig fields checked against the range of the setting they come from.
_RANGES: dict[str, Setting] = {
    "heartbeat_interval": HEARTBEAT,
    "reannounce_interval": REANNOUNCE_INTERVAL,
    "head_timeout": HEAD_TIMEOUT,
    "connect_timeout": CONNECT_TIMEOUT,
    "inline_limit": INLINE_LIMIT,
    "max_fetch_size": MAX_FETCH_SIZE,
    "max_update_size": MAX_UPDATE_SIZE,
    "peer_rate": PEER_RATE,
    "peer_burst": PEER_BURST,
    "announcements_per_peer": ANNOUNCEMENTS_PER_PEER,
}


@dataclass(frozen=True)
class NodeConfig:
    """Validated settings of one node. Build with :func:`load_node_config`.

    Constructing one directly checks the numbers too: a non-finite or
    out-of-range value is a :class:`~fedstore.errors.ConfigError` naming the
    setting it corresponds to.
    """

    role: str = "trainer"
    data_dir: Path = Path("fedstore-data")
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    announce_ip: str | None = None
    #: Multiaddrs to advertise instead of the bound ones (see fedstore.p2p.addresses).
    announce: tuple[str, ...] = ()
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

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"FEDSTORE_ROLE={self.role!r}: expected one of {', '.join(ROLES)}")
        for f in fields(self):
            setting = _RANGES.get(f.name)
            if setting is not None:
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{setting.name}: {value!r} is not a number")
                setting.check(float(value))


def validate_core_settings(settings: Mapping[str, str]) -> None:
    """Check every core setting's value by its kind and range (one-line ConfigError)."""
    text = INLINE_LIMIT.raw(settings)
    if text.isdigit() and int(text) > MAX_INLINE_LIMIT:
        raise ConfigError(
            f"FEDSTORE_INLINE_LIMIT={text} is above {MAX_INLINE_LIMIT}: py-libp2p drops "
            "pubsub messages over 1 MiB without a word; larger payloads travel as CIDs anyway"
        )
    for setting in CORE_SETTINGS:
        setting.validate(settings)


def load_node_config(
    flags: Mapping[str, str | None] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    toml_file: str | os.PathLike[str] | None = None,
    cwd: Path | None = None,
) -> NodeConfig:
    """Build a :class:`NodeConfig`. *flags* maps setting names to flag values (None = unset).

    Flags may use an alias (``CHECKPOINT_DIR``); they still beat every
    other source.
    """
    resolved = resolve_settings(
        environ, flags=flags, env_file=env_file, toml_file=toml_file, cwd=cwd
    )
    settings = resolved.values
    validate_core_settings(settings)
    role = ROLE.text(settings).lower()
    from fedstore.store.paths import legacy_data_dir_hint, resolve_data_dir

    data_dir = resolve_data_dir(DIR.text(settings) or None, {}, cwd=cwd)
    hint = legacy_data_dir_hint(data_dir, cwd=cwd)
    if hint:
        log.warning("%s", hint)
    is_cloud = IS_CLOUD.flag(settings)
    ip = IP.text(settings) or None
    if is_cloud and not ip:
        raise ConfigError(
            "FEDSTORE_IS_CLOUD is true but FEDSTORE_IP is not set: set FEDSTORE_IP to the "
            "public address"
        )
    announce = _split(ANNOUNCE.text(settings))
    if announce and is_cloud:
        raise ConfigError(
            "FEDSTORE_ANNOUNCE and FEDSTORE_IS_CLOUD/FEDSTORE_IP both say what to advertise: "
            "set one (FEDSTORE_ANNOUNCE=/ip4/<IP> is what FEDSTORE_IS_CLOUD did)"
        )
    if announce:
        from fedstore.p2p.addresses import parse_announce

        parse_announce(announce)  # a bad address is a one-line error before anything starts
    backends_text = BACKENDS.text(settings)
    return NodeConfig(
        role=role,
        data_dir=data_dir,
        listen=_split(LISTEN.text(settings)) or (DEFAULT_LISTEN,),
        bootstrap=_split(BOOTSTRAP.text(settings)),
        announce_ip=ip if is_cloud else None,
        announce=announce,
        backends=_split(backends_text) if backends_text else None,
        heartbeat_interval=HEARTBEAT.number(settings),
        reannounce_interval=REANNOUNCE_INTERVAL.number(settings),
        head_timeout=HEAD_TIMEOUT.number(settings),
        connect_timeout=CONNECT_TIMEOUT.number(settings),
        inline_limit=INLINE_LIMIT.integer(settings),
        max_fetch_size=MAX_FETCH_SIZE.integer(settings),
        max_update_size=MAX_UPDATE_SIZE.integer(settings),
        peer_rate=PEER_RATE.number(settings),
        peer_burst=PEER_BURST.integer(settings),
        announcements_per_peer=ANNOUNCEMENTS_PER_PEER.integer(settings),
        auto_sync=AUTO_SYNC.flag(settings),
        federation=FEDERATION.text(settings) or None,
        verify=VERIFY.text(settings).lower() != "off",
        settings=settings,
    )


def core_setting(name: str) -> Setting:
    """The core setting declared as *name* (or under that alias); KeyError if none."""
    for setting in CORE_SETTINGS:
        if name == setting.name or name in setting.aliases:
            return setting
    raise KeyError(name)


def core_table(setting: Setting) -> str:
    """The ``fedstore.toml`` table a core setting lives in (``fedstore`` or its section)."""
    from fedstore.config_sources import CORE_TABLE

    for table, settings in CORE_SECTIONS.items():
        if setting in settings:
            return table
    return CORE_TABLE
