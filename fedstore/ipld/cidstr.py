"""CID strings and binary CIDs: parse, print, and the base58btc / base32 codecs they use.

v0 is base58btc of the sha2-256 multihash (``Qm...``); v1 is ``b`` plus
unpadded lowercase base32 of ``0x01 <codec> <multihash>``. :func:`parse_cid`
also reads multibase v1 strings in base58btc (``z``) and base16 (``f``).
Only sha2-256 with the dag-pb (0x70) and raw (0x55) codecs is supported:
those are the CIDs ``ipfs add`` makes. Everything else is an
:class:`~fedstore.errors.InvalidCIDError`, whose message names the CID
(shortened) and what is wrong with it.

Pure module, no I/O. The names are re-exported by :mod:`fedstore.ipld.cid`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import ClassVar

from fedstore.errors import FormatError, InvalidCIDError
from fedstore.ipld.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    MH_SHA2_256,
    SHA256_LEN,
    BytesLike,
    binary_cid,
    decode_varint,
)

__all__ = [
    "MAX_CID_STR_LEN",
    "ParsedCid",
    "cid_from_bytes",
    "cid_to_bytes",
    "cid_to_str",
    "parse_cid",
    "read_binary_cid",
    "same_cid",
]

#: Longest CID string parse_cid looks at (a sha2-256 CIDv1 in base32 is 59 chars).
MAX_CID_STR_LEN = 200

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B32_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def _b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out: list[str] = []
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    num = 0
    for ch in text:
        idx = _B58_INDEX.get(ch)
        if idx is None:
            raise InvalidCIDError(f"character {ch!r} is not base58btc")
        num = num * 58 + idx
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _b32decode(text: str) -> bytes:
    lower = text.lower()
    if text not in (lower, text.upper()) or not set(lower) <= _B32_CHARS:
        raise InvalidCIDError("not valid base32 (RFC 4648, no padding)")
    if len(lower) % 8 in (1, 3, 6):
        raise InvalidCIDError("base32 text has an impossible length")
    try:
        data = base64.b32decode(lower.upper() + "=" * (-len(lower) % 8))
    except binascii.Error as exc:
        raise InvalidCIDError(f"not valid base32: {exc}") from exc
    if _b32encode(data) != lower:
        raise InvalidCIDError("base32 text is not canonical (non-zero trailing bits)")
    return data


@dataclass(frozen=True, slots=True)
class ParsedCid:
    """A CID fedstore understands: sha2-256, codec dag-pb (0x70) or raw (0x55).

    ``str()`` gives the canonical string (``Qm...`` for v0, ``b...`` base32 for
    v1); ``bytes()`` the binary form used in CARs and bitswap.
    """

    version: int
    codec: int
    digest: bytes
    multihash: bytes

    DAG_PB: ClassVar[int] = CODEC_DAG_PB
    RAW: ClassVar[int] = CODEC_RAW

    def __bytes__(self) -> bytes:
        return binary_cid(self.version, self.codec, self.digest)

    def __str__(self) -> str:
        return cid_to_str(bytes(self))

    def to_v1(self) -> ParsedCid:
        """The same block addressed by a CIDv1."""
        return ParsedCid(1, self.codec, self.digest, self.multihash)

    def same_block(self, other: ParsedCid) -> bool:
        """True when both address the same block (a v0 and its v1 form do)."""
        return self.codec == other.codec and self.multihash == other.multihash


def read_binary_cid(buf: BytesLike, pos: int = 0) -> tuple[ParsedCid, int]:
    """Decode a binary CID at ``buf[pos:]``; return it and the position after it."""
    if len(buf) - pos >= 2 and buf[pos] == MH_SHA2_256 and buf[pos + 1] == SHA256_LEN:
        end = pos + 2 + SHA256_LEN
        if end > len(buf):
            raise InvalidCIDError("truncated CIDv0: a sha2-256 multihash needs 34 bytes")
        digest = bytes(buf[pos + 2 : end])
        return ParsedCid(0, CODEC_DAG_PB, digest, b"\x12\x20" + digest), end
    try:
        version, p = decode_varint(buf, pos)
        if version != 1:
            raise InvalidCIDError(f"unsupported CID version {version} (expected 0 or 1)")
        codec, p = decode_varint(buf, p)
        if codec not in (CODEC_DAG_PB, CODEC_RAW):
            raise InvalidCIDError(
                f"unsupported codec 0x{codec:x} (fedstore handles dag-pb 0x70 and raw 0x55)"
            )
        mh_code, p = decode_varint(buf, p)
        mh_len, p = decode_varint(buf, p)
    except FormatError as exc:  # truncated or overlong varint
        raise InvalidCIDError(f"malformed binary CID: {exc}") from exc
    if mh_code != MH_SHA2_256:
        raise InvalidCIDError(f"unsupported hash function 0x{mh_code:x} (only sha2-256)")
    if mh_len != SHA256_LEN:
        raise InvalidCIDError(f"wrong sha2-256 digest length {mh_len} (expected 32)")
    if p + SHA256_LEN > len(buf):
        raise InvalidCIDError("truncated CID: digest shorter than 32 bytes")
    digest = bytes(buf[p : p + SHA256_LEN])
    return ParsedCid(1, codec, digest, b"\x12\x20" + digest), p + SHA256_LEN


def cid_from_bytes(data: BytesLike) -> ParsedCid:
    """Parse a binary CID that must fill ``data`` exactly."""
    parsed, end = read_binary_cid(data, 0)
    if end != len(data):
        raise InvalidCIDError(f"{len(data) - end} unexpected bytes after the CID")
    return parsed


def cid_to_str(cid: BytesLike) -> str:
    """String form of a binary CID: base58btc for v0, ``b`` + base32 for v1."""
    raw = bytes(cid)
    if raw[:2] == b"\x12\x20":
        return _b58encode(raw)
    return "b" + _b32encode(raw)


def parse_cid(text: str) -> ParsedCid:
    """Parse a CID string, raising :class:`InvalidCIDError` for anything else.

    Accepts ``Qm...`` (v0, base58btc) and multibase v1 strings in base32
    (``b``/``B``), base58btc (``z``) and base16 (``f``/``F``). Surrounding
    whitespace is ignored.
    """
    if not isinstance(text, str):
        raise InvalidCIDError(f"a CID must be a string, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise InvalidCIDError("empty CID")
    if len(s) > MAX_CID_STR_LEN:
        raise InvalidCIDError(f"CID too long ({len(s)} characters, at most {MAX_CID_STR_LEN})")
    shown = s if len(s) <= 64 else s[:61] + "..."
    try:
        if len(s) == 46 and s.startswith("Qm"):
            raw = _b58decode(s)
            if len(raw) != 34 or raw[:2] != b"\x12\x20":
                raise InvalidCIDError("not a sha2-256 CIDv0")
            return cid_from_bytes(raw)
        prefix, body = s[0], s[1:]
        if not body:
            raise InvalidCIDError("nothing after the multibase prefix")
        if prefix in "bB":
            raw = _b32decode(body)
        elif prefix == "z":
            raw = _b58decode(body)
            if _b58encode(raw) != body:
                raise InvalidCIDError("base58 text is not canonical")
        elif prefix in "fF":
            if body not in (body.lower(), body.upper()) or len(body) % 2:
                raise InvalidCIDError("not valid base16")
            try:
                raw = bytes.fromhex(body)
            except ValueError as exc:
                raise InvalidCIDError("not valid base16") from exc
        elif s.startswith("Qm"):
            raise InvalidCIDError(f"a CIDv0 has 46 characters, this one has {len(s)}")
        else:
            raise InvalidCIDError(
                f"unsupported multibase prefix {prefix!r} "
                "(expected a 'Qm...' CIDv0 or a base32 'b...' CIDv1)"
            )
        return cid_from_bytes(raw)
    except InvalidCIDError as exc:
        raise InvalidCIDError(f"invalid CID {shown!r}: {exc}") from None


def cid_to_bytes(cid: str | ParsedCid) -> bytes:
    """Binary form of a CID string (or a ParsedCid)."""
    parsed = cid if isinstance(cid, ParsedCid) else parse_cid(cid)
    return bytes(parsed)


def same_cid(a: str, b: str) -> bool:
    """Whether two CID strings name the same content: the one CID-equality rule.

    CIDs are equal when they parse to the same version, codec and multihash,
    whatever multibase spells them (a v1 CID in base32 and in base58btc are
    the same CID). A v0 CID and the v1 CID of the same block are *not* equal
    here: a backend must answer with the CID version it was asked for
    (``ipfs add --cid-version``); :meth:`ParsedCid.same_block` compares blocks.
    Unparsable strings are equal to nothing but themselves.
    """
    if a == b:
        return True
    try:
        return parse_cid(a) == parse_cid(b)
    except InvalidCIDError:
        return False
