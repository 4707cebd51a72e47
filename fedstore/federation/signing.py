"""Ed25519 signatures by peer id: who said what, checkable from the document alone.

A libp2p Ed25519 peer id (``12D3KooW...``) is an identity multihash of the
public key, so anyone holding a peer id holds the key that verifies its
signatures: no key server, no certificate. fedstore signs two kinds of
statement with the node's identity key (``identity.key`` in the data
directory, the key its peer id comes from):

* a federation manifest, by its owner (:mod:`fedstore.federation.manifest`);
* a trainer's update claim (round, base, sender, samples, payload CID), by
  the trainer, so a member can check an update listed in a global checkpoint
  without having heard it (:mod:`fedstore.federation.verify`).

Every signature covers ``domain || 0x00 || message``: a signature made for one
kind of statement can never be replayed as another. Signatures travel as
standard base64 text. Verification never raises on bad input: a peer id that
is not an inline Ed25519 key, a malformed signature or a wrong one are all
just ``False``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path
from typing import Protocol

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.keys import KeyPair, KeyType, PublicKey
from libp2p.peer.id import ID

__all__ = [
    "MANIFEST_DOMAIN",
    "UPDATE_DOMAIN",
    "KeySigner",
    "Signer",
    "decode_signature",
    "encode_signature",
    "is_ed25519_peer_id",
    "load_signer",
    "verify_signature",
]

#: what a manifest owner's signature covers
MANIFEST_DOMAIN = b"fedstore/manifest/v1"
#: what a trainer's update signature covers
UPDATE_DOMAIN = b"fedstore/update/v1"
SIGNATURE_BYTES = 64


class Signer(Protocol):
    """Something that signs statements as one peer id."""

    @property
    def peer_id(self) -> str: ...

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``domain || 0x00 || message``."""
        ...


def _signed_bytes(domain: bytes, message: bytes) -> bytes:
    return domain + b"\x00" + message


class KeySigner:
    """A :class:`Signer` over a libp2p Ed25519 key pair (never printed)."""

    def __init__(self, key_pair: KeyPair) -> None:
        if key_pair.private_key.get_type() != KeyType.Ed25519:
            raise ValueError("fedstore signs with Ed25519 keys only")
        self._key_pair = key_pair
        self._peer_id = ID.from_pubkey(key_pair.public_key).to_base58()

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return bytes(self._key_pair.private_key.sign(_signed_bytes(domain, message)))

    def __repr__(self) -> str:
        return f"KeySigner({self._peer_id})"


def load_signer(data_dir: str | Path) -> KeySigner:
    """The signer of the identity in ``data_dir`` (``identity.key``, created if missing).

    :class:`~fedstore.errors.ConfigError` if the file is not a usable key.
    """
    from fedstore.p2p.identity import load_or_create_identity

    return KeySigner(load_or_create_identity(Path(data_dir)).key_pair)


@functools.lru_cache(maxsize=4096)
def _public_key(peer_id: str) -> PublicKey | None:
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception:  # malformed base58 / multihash / protobuf: not a key
        return None
    if key is None or key.get_type() != KeyType.Ed25519 or not isinstance(key, Ed25519PublicKey):
        return None
    return key


def is_ed25519_peer_id(peer_id: str) -> bool:
    """True if ``peer_id`` inlines an Ed25519 public key (so its signatures can be checked)."""
    return isinstance(peer_id, str) and 0 < len(peer_id) <= 128 and _public_key(peer_id) is not None


def verify_signature(peer_id: str, domain: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``peer_id``'s over ``domain || 0x00 || message``."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
        return False
    key = _public_key(peer_id) if isinstance(peer_id, str) and len(peer_id) <= 128 else None
    if key is None:
        return False
    try:
        return bool(key.verify(_signed_bytes(domain, message), bytes(signature)))
    except Exception:  # a malformed point or signature is a failed check, never a crash
        return False


def encode_signature(signature: bytes) -> str:
    """A signature as standard base64 text."""
    return base64.b64encode(signature).decode("ascii")


def decode_signature(text: object) -> bytes | None:
    """The signature in base64 ``text``; None if it is not exactly one signature's base64."""
    if not isinstance(text, str) or len(text) != 88:
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != SIGNATURE_BYTES or encode_signature(raw) != text:
        return None
    return raw
