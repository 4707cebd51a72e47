"""The federation manifest: who belongs, in which roles, and the rules of the rounds.

A manifest is a small canonical JSON document signed by its owner's Ed25519
key. It names the members (peer ids) with their roles - ``trainer``,
``aggregator``, or both -, the strategy every aggregate is computed with,
and the round settings every member must agree on::

    {"fedstore-manifest": 1, "name": "digits", "owner": "12D3KooW...",
     "previous": null, "initial": null,
     "members": [{"peer": "12D3KooW...", "roles": ["aggregator", "trainer"]}, ...],
     "strategy": {"name": "median", "settings": {}},
     "rounds": 10, "round_timeout": 30.0, "quorum": 3, "aggregation": "rotate",
     "update_encoding": "float32"}

Canonical means one text per document: keys sorted, no whitespace, ASCII,
no NaN, members sorted by peer id with sorted roles. What is stored, signed
over and addressed is the *envelope* ``{"manifest": <doc>, "signature":
<base64>}`` in canonical form; its CID (CIDv1, as ``ipfs add
--cid-version=1`` computes it) names the manifest everywhere: in every
global checkpoint's metadata, in every federation message, in the catalog.

The owner's peer id inlines its public key, so :func:`parse_signed` needs
nothing but the bytes to check the signature. A new version is a new signed
document whose ``previous`` is the CID of the one it replaces, signed by
the same owner (:func:`check_successor`). ``initial`` optionally pins the
federation's starting weights: the CID of ``fedstore.format.encode(arrays,
{})`` (see :func:`initial_cid`), which members check round 0 against.

Parsing is strict and bounded (unknown or duplicate keys, wrong types,
out-of-range numbers, malformed ids and CIDs are refused with a one-line
:class:`~fedstore.errors.ManifestError`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedstore.errors import InvalidCIDError, ManifestError
from fedstore.federation.signing import (
    MANIFEST_DOMAIN,
    Signer,
    decode_signature,
    encode_signature,
    is_ed25519_peer_id,
    verify_signature,
)

__all__ = [
    "AGGREGATION_MODES",
    "MANIFEST_CID_VERSION",
    "MAX_MANIFEST_BYTES",
    "ROLES",
    "Manifest",
    "Member",
    "SignedManifest",
    "check_successor",
    "initial_cid",
    "load_manifest_file",
    "parse_signed",
    "sign_manifest",
    "write_manifest_file",
]

FORMAT = 1
ROLES = ("aggregator", "trainer")
AGGREGATION_MODES = ("rotate", "leaderless")
MAX_MANIFEST_BYTES = 256 * 1024
MAX_MEMBERS = 1024
MAX_ROUNDS = 1_000_000
MAX_ROUND_TIMEOUT = 86_400.0
MANIFEST_CID_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/@+-]{0,127}")
_STRATEGY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SETTING_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

Setting = str | int | float


@dataclass(frozen=True, slots=True)
class Member:
    """One member: its peer id and roles (a non-empty subset of :data:`ROLES`)."""

    peer: str
    roles: frozenset[str]

    def doc(self) -> dict[str, Any]:
        return {"peer": self.peer, "roles": sorted(self.roles)}


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's content (see the module docstring); build, then :func:`sign_manifest`."""

    name: str
    owner: str
    members: tuple[Member, ...]
    strategy: str = "fedavg"
    strategy_settings: Mapping[str, Setting] = field(default_factory=dict)
    rounds: int = 10
    round_timeout: float = 30.0
    #: fewest members whose updates a round may be aggregated with
    quorum: int = 1
    aggregation: str = "rotate"
    previous: str | None = None
    initial: str | None = None
    #: how trainers encode their updates (fedstore.federation.update_encoding text form)
    update_encoding: str = "float32"

    # -- reading ---------------------------------------------------------------------
    def roles_of(self, peer: str) -> frozenset[str]:
        """The roles of ``peer`` (empty if it is not a member)."""
        for m in self.members:
            if m.peer == peer:
                return m.roles
        return frozenset()

    def is_member(self, peer: str) -> bool:
        return bool(self.roles_of(peer))

    def peers_with(self, role: str) -> tuple[str, ...]:
        """Members holding ``role``, sorted by peer id."""
        return tuple(m.peer for m in self.members if role in m.roles)

    @property
    def aggregators(self) -> tuple[str, ...]:
        return self.peers_with("aggregator")

    @property
    def trainers(self) -> tuple[str, ...]:
        return self.peers_with("trainer")

    # -- canonical form --------------------------------------------------------------
    def doc(self) -> dict[str, Any]:
        """The document as JSON values (what is signed, in canonical form)."""
        return {
            "fedstore-manifest": FORMAT,
            "name": self.name,
            "owner": self.owner,
            "previous": self.previous,
            "initial": self.initial,
            "members": [m.doc() for m in sorted(self.members, key=lambda m: m.peer)],
            "strategy": {"name": self.strategy, "settings": dict(self.strategy_settings)},
            "rounds": self.rounds,
            "round_timeout": float(self.round_timeout),
            "quorum": self.quorum,
            "aggregation": self.aggregation,
            "update_encoding": self.update_encoding,
        }

    def check(self) -> Manifest:
        """Return self if every field is valid (the rules :func:`parse_signed` applies)."""
        return Manifest.from_doc(self.doc())

    @classmethod
    def from_doc(cls, doc: object) -> Manifest:
        """Strictly read a manifest document; :class:`ManifestError` names what is wrong."""
        if not isinstance(doc, dict):
            raise ManifestError("the manifest is not a JSON object")
        _keys(
            doc,
            {
                "fedstore-manifest",
                "name",
                "owner",
                "previous",
                "members",
                "strategy",
                "rounds",
                "round_timeout",
                "quorum",
                "aggregation",
            },
            {"initial", "update_encoding"},
        )
        if doc["fedstore-manifest"] != FORMAT or isinstance(doc["fedstore-manifest"], bool):
            raise ManifestError(f"unsupported manifest format {doc['fedstore-manifest']!r:.20}")
        name = doc["name"]
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ManifestError(
                f"name must be 1-128 letters, digits, spaces or ._:/@+-, got {name!r:.60}"
            )
        owner = _peer(doc["owner"], "owner")
        members = _members(doc["members"])
        strategy, settings = _strategy(doc["strategy"])
        rounds = _int(doc["rounds"], "rounds", 1, MAX_ROUNDS)
        timeout = _number(doc["round_timeout"], "round_timeout", 0.0, MAX_ROUND_TIMEOUT)
        if timeout <= 0:
            raise ManifestError("round_timeout must be more than 0 seconds")
        mode = doc["aggregation"]
        if mode not in AGGREGATION_MODES:
            raise ManifestError(
                f"aggregation must be one of {', '.join(AGGREGATION_MODES)}, got {mode!r:.40}"
            )
        manifest = cls(
            name=name,
            owner=owner,
            members=members,
            strategy=strategy,
            strategy_settings=settings,
            rounds=rounds,
            round_timeout=timeout,
            quorum=_int(doc["quorum"], "quorum", 1, MAX_MEMBERS),
            aggregation=mode,
            previous=_cid_or_none(doc["previous"], "previous"),
            initial=_cid_or_none(doc.get("initial"), "initial"),
            update_encoding=_encoding(doc.get("update_encoding", "float32")),
        )
        if not manifest.aggregators:
            raise ManifestError("no member has the aggregator role")
        if not manifest.trainers:
            raise ManifestError("no member has the trainer role")
        if manifest.quorum > len(manifest.trainers):
            raise ManifestError(
                f"quorum {manifest.quorum} is more than the {len(manifest.trainers)} trainer(s)"
            )
        return manifest

    # -- new versions ----------------------------------------------------------------
    def with_members(self, members: Sequence[Member]) -> Manifest:
        """This manifest with ``members`` replacing and extending the listed ones by peer."""
        by_peer = {m.peer: m for m in self.members}
        for m in members:
            by_peer[m.peer] = m
        return replace(self, members=tuple(sorted(by_peer.values(), key=lambda m: m.peer)))

    def without(self, peers: Sequence[str]) -> Manifest:
        """This manifest without ``peers``; ManifestError for one that is not a member."""
        missing = [p for p in peers if not self.is_member(p)]
        if missing:
            raise ManifestError(f"not a member: {', '.join(missing)}")
        drop = set(peers)
        return replace(self, members=tuple(m for m in self.members if m.peer not in drop))


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A verified manifest: its content, the owner's signature, its bytes and CID."""

    manifest: Manifest
    signature: bytes = field(repr=False)
    data: bytes = field(repr=False)
    cid: str


def canonical_bytes(value: object) -> bytes:
    """Sorted keys, no whitespace, ASCII, no NaN: the one text of a JSON value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sign_manifest(manifest: Manifest, signer: Signer) -> SignedManifest:
    """Check ``manifest`` and sign it as its owner; ManifestError if ``signer`` is not the owner."""
    manifest = manifest.check()
    if signer.peer_id != manifest.owner:
        raise ManifestError(
            f"the manifest's owner is {manifest.owner}; this key is {signer.peer_id}"
        )
    doc = manifest.doc()
    signature = signer.sign(MANIFEST_DOMAIN, canonical_bytes(doc))
    data = canonical_bytes({"manifest": doc, "signature": encode_signature(signature)})
    return parse_signed(data)


def parse_signed(data: bytes) -> SignedManifest:
    """Parse, check and verify a stored manifest (the canonical envelope bytes).

    Raises :class:`ManifestError` if the bytes are too large, not canonical
    JSON, not a valid manifest, or not signed by the owner the document names.
    """
    from fedstore.ipld.cid import cid_of_bytes

    data = bytes(data)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        envelope = json.loads(
            data.decode("ascii"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except ManifestError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"not a manifest (not ASCII JSON): {exc}") from None
    if not isinstance(envelope, dict):
        raise ManifestError("not a manifest (not a JSON object)")
    _keys(envelope, {"manifest", "signature"}, set())
    if canonical_bytes(envelope) != data:
        raise ManifestError("the manifest is not in canonical form (re-sign it with fedstore)")
    manifest = Manifest.from_doc(envelope["manifest"])
    signature = decode_signature(envelope["signature"])
    if signature is None:
        raise ManifestError("the manifest's signature is not base64 of 64 bytes")
    if not verify_signature(
        manifest.owner, MANIFEST_DOMAIN, canonical_bytes(envelope["manifest"]), signature
    ):
        raise ManifestError(f"the manifest's signature is not its owner's ({manifest.owner})")
    return SignedManifest(manifest, signature, data, cid_of_bytes(data, MANIFEST_CID_VERSION))


def check_successor(previous: SignedManifest, new: SignedManifest) -> None:
    """ManifestError unless ``new`` is a next version of ``previous`` (same owner, linked)."""
    if new.manifest.previous != previous.cid:
        raise ManifestError(
            f"manifest {new.cid} names {new.manifest.previous or 'no previous version'}, "
            f"not {previous.cid}"
        )
    if new.manifest.owner != previous.manifest.owner:
        raise ManifestError(
            f"manifest {new.cid} has owner {new.manifest.owner}; "
            f"its previous version's owner is {previous.manifest.owner}"
        )


def initial_cid(arrays: Mapping[str, npt.NDArray[np.generic]]) -> str:
    """The CID that pins starting weights in a manifest's ``initial``."""
    from fedstore.format import encode
    from fedstore.ipld.cid import cid_of_bytes

    return cid_of_bytes(encode(arrays, {}), MANIFEST_CID_VERSION)


def load_manifest_file(path: str | os.PathLike[str]) -> SignedManifest:
    """Read and verify a manifest file; ManifestError (with the path) otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {p}: {exc.strerror or exc}") from exc
    try:
        return parse_signed(data)
    except ManifestError as exc:
        raise ManifestError(f"{p}: {exc}") from None


def write_manifest_file(path: str | os.PathLike[str], signed: SignedManifest) -> None:
    """Write a manifest's bytes to ``path`` atomically (temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(signed.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ManifestError(f"cannot write manifest {p}: {exc.strerror or exc}") from exc


# -- strict readers ----------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicate key {key!r:.40} in the manifest")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ManifestError(f"non-finite number {name} in the manifest")


def _keys(doc: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = required - doc.keys()
    if missing:
        raise ManifestError(f"the manifest lacks {', '.join(sorted(missing))}")
    unknown = doc.keys() - required - optional
    if unknown:
        raise ManifestError(f"unknown manifest keys: {', '.join(sorted(unknown))[:120]}")


def _int(v: object, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ManifestError(f"{key} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _number(v: object, key: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ManifestError(f"{key} must be a number, got {v!r:.40}")
    f = float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ManifestError(f"{key} must be in [{lo:g}, {hi:g}], got {f}")
    return f


def _peer(v: object, key: str) -> str:
    if not isinstance(v, str) or not is_ed25519_peer_id(v):
        raise ManifestError(f"{key} is not an Ed25519 peer id (12D3KooW...): {v!r:.60}")
    return v


def _cid_or_none(v: object, key: str) -> str | None:
    if v is None:
        return None
    from fedstore.ipld.cid import parse_cid

    if not isinstance(v, str) or not 1 <= len(v) <= 200:
        raise ManifestError(f"{key} must be a CID or null, got {v!r:.60}")
    try:
        parse_cid(v)
    except InvalidCIDError as exc:
        raise ManifestError(f"{key} is not a valid CID: {exc}") from None
    return v


def _encoding(v: object) -> str:
    from fedstore.errors import ConfigError
    from fedstore.federation.update_encoding import UpdateEncoding

    if not isinstance(v, str) or len(v) > 32:
        raise ManifestError(f"update_encoding must be an encoding name, got {v!r:.40}")
    try:
        text = UpdateEncoding.parse(v).text
    except ConfigError as exc:
        raise ManifestError(f"update_encoding: {exc}") from None
    if text != v:
        raise ManifestError(f"update_encoding {v!r} is spelled {text!r} in canonical form")
    return text


def _members(v: object) -> tuple[Member, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_MEMBERS:
        raise ManifestError(f"members must be a list of 1 to {MAX_MEMBERS} members")
    out: list[Member] = []
    for i, entry in enumerate(v):
        if not isinstance(entry, dict):
            raise ManifestError(f"member {i} is not an object")
        _keys(entry, {"peer", "roles"}, set())
        peer = _peer(entry["peer"], f"member {i}")
        roles = entry["roles"]
        if (
            not isinstance(roles, list)
            or not roles
            or any(r not in ROLES for r in roles)
            or roles != sorted(set(roles))
        ):
            raise ManifestError(
                f"member {peer}: roles must be a sorted, non-empty list of {', '.join(ROLES)}"
            )
        if out and peer <= out[-1].peer:
            raise ManifestError(f"members must be sorted by peer id without duplicates (at {peer})")
        out.append(Member(peer, frozenset(roles)))
    return tuple(out)


def _strategy(v: object) -> tuple[str, dict[str, Setting]]:
    if not isinstance(v, dict):
        raise ManifestError("strategy must be an object with name and settings")
    _keys(v, {"name", "settings"}, set())
    name = v["name"]
    if not isinstance(name, str) or not _STRATEGY_RE.fullmatch(name):
        raise ManifestError(f"strategy name is not a strategy name: {name!r:.60}")
    settings = v["settings"]
    if not isinstance(settings, dict) or len(settings) > 32:
        raise ManifestError("strategy settings must be an object of at most 32 values")
    out: dict[str, Setting] = {}
    for key, value in settings.items():
        if not _SETTING_RE.fullmatch(key):
            raise ManifestError(f"strategy setting name {key!r:.40} is not an identifier")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ManifestError(f"strategy setting {key} must be a string or a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ManifestError(f"strategy setting {key} is not finite")
        if isinstance(value, str) and len(value) > 256:
            raise ManifestError(f"strategy setting {key} is longer than 256 characters")
        out[key] = value
    return name, out
