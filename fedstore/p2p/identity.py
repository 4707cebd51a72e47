"""The node's persistent libp2p identity (an Ed25519 key pair).

The private key is created once, on first start, and kept in the node's data
directory as ``identity.key`` (libp2p's protobuf key encoding, the format
go-libp2p and Kubo use), readable by the owner only (mode 0600). Every later
start loads the same key, so a restarted peer keeps its peer id. The key is
never logged and never part of a repr.

Creation is atomic and safe against two processes starting in the same
directory at once: the key is written to a temporary file, fsynced and then
hard-linked into place; the loser of a race loads the winner's key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from fedstore.errors import ConfigError

__all__ = ["IDENTITY_FILENAME", "Identity", "load_or_create_identity"]

log = logging.getLogger(__name__)

IDENTITY_FILENAME = "identity.key"
_MAX_KEY_FILE = 4096


@dataclass(frozen=True)
class Identity:
    """A node identity: its key pair (never printed) and its peer id."""

    key_pair: KeyPair = field(repr=False)
    peer_id: str
    path: Path
    created: bool = False


def _read_key(path: Path) -> KeyPair:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("identity key %s had mode %o; restricting it to 0600", path, mode)
        os.chmod(path, 0o600)
    with open(path, "rb") as fh:
        data = fh.read(_MAX_KEY_FILE + 1)
    if not data or len(data) > _MAX_KEY_FILE:
        raise ConfigError(
            f"identity key {path} is empty or too large; move it away to create a new identity"
        )
    try:
        private = deserialize_private_key(data)
    except Exception as exc:  # protobuf / key-type errors from libp2p
        raise ConfigError(
            f"identity key {path} is not a libp2p private key ({type(exc).__name__}); "
            "move it away to create a new identity"
        ) from exc
    if private.get_type() != KeyType.Ed25519:
        raise ConfigError(f"identity key {path} is not an Ed25519 key")
    return KeyPair(private, private.get_public_key())


def _write_new_key(path: Path) -> KeyPair:
    key_pair = create_new_key_pair()
    data = key_pair.private_key.serialize()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails with FileExistsError if another process won
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key_pair


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load ``<data_dir>/identity.key``, creating the directory and key on first use.

    Raises :class:`~fedstore.errors.ConfigError` if the file exists but is not
    a usable Ed25519 key, or the directory cannot be written.
    """
    data_dir = Path(data_dir)
    path = data_dir / IDENTITY_FILENAME
    created = False
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if path.exists():
            key_pair = _read_key(path)
        else:
            try:
                key_pair = _write_new_key(path)
                created = True
                log.info("created new node identity in %s", path)
            except FileExistsError:
                key_pair = _read_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot use identity key {path}: {exc.strerror or exc}") from exc
    peer_id = ID.from_pubkey(key_pair.public_key).to_base58()
    return Identity(key_pair=key_pair, peer_id=peer_id, path=path, created=created)
