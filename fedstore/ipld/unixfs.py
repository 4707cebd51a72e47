"""dag-pb and UnixFS encoding, and Kubo's balanced DAG layout.

This module holds the byte-exact rules that make fedstore's CIDs equal to the
ones Kubo's ``ipfs add`` prints (see ``fedstore.ipld.cid`` for the public API):

* UnixFS ``Data`` (proto2): ``Type`` (1), ``Data`` (2, omitted when empty),
  ``filesize`` (3, always written), ``blocksizes`` (4, unpacked).
* dag-pb ``PBNode``: every ``PBLink`` (field 2) first, ``Data`` (field 1) last.
* ``PBLink``: ``Hash`` (1), ``Name`` (2, always written even when empty, as Kubo
  does), ``Tsize`` (3).
* Leaves of the balanced layout are UnixFS ``File`` nodes (or raw blocks);
  internal nodes are ``File`` nodes with ``blocksizes`` and no ``Data``.
* The layout is boxo's top-down balanced builder: a full tree of depth *d* is
  pushed down as the first child of a new root of depth *d+1*, which is filled
  recursively; a lone trailing chunk still gets its own internal node.

It also decodes the same structures (for verified CAR reading), raising
:class:`~fedstore.errors.FormatError` on anything malformed. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from fedstore.errors import FormatError

__all__ = [
    "CODEC_DAG_PB",
    "CODEC_RAW",
    "MH_SHA2_256",
    "UNIXFS_FILE",
    "UNIXFS_RAW",
    "BytesLike",
    "Link",
    "PBLink",
    "PBNode",
    "TreeNode",
    "UnixFSData",
    "balanced_layout",
    "binary_cid",
    "decode_pbnode",
    "decode_unixfs",
    "decode_varint",
    "encode_internal_node",
    "encode_varint",
    "hash_leaf",
    "leaf_envelope",
]

BytesLike: TypeAlias = bytes | bytearray | memoryview

CODEC_DAG_PB = 0x70
CODEC_RAW = 0x55
MH_SHA2_256 = 0x12
SHA256_LEN = 32

UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2

_MAX_VARINT_BYTES = 9  # multiformats unsigned varints are capped at 2**63 - 1


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 varint (protobuf and multiformats share the format)."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: BytesLike, pos: int = 0) -> tuple[int, int]:
    """Decode a varint at ``buf[pos:]``; return ``(value, next_pos)``.

    Raises FormatError when the varint is truncated, longer than 9 bytes or not
    minimally encoded.
    """
    value = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise FormatError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise FormatError("varint is not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise FormatError("varint longer than 9 bytes")


def binary_cid(version: int, codec: int, digest: bytes) -> bytes:
    """Binary CID for a sha2-256 ``digest``: v0 is the bare multihash (dag-pb only)."""
    if version == 0:
        if codec != CODEC_DAG_PB:
            raise ValueError("CIDv0 can only address dag-pb blocks")
        return b"\x12\x20" + digest
    return b"\x01" + encode_varint(codec) + b"\x12\x20" + digest


@dataclass(frozen=True, slots=True)
class Link:
    """What a parent needs to know about a child block.

    ``cid`` is the binary CID, ``tsize`` the cumulative size Kubo writes in
    ``PBLink.Tsize`` (block length plus the Tsize of all its links) and
    ``filesize`` the number of file bytes under the child.
    """

    cid: bytes
    tsize: int
    filesize: int


def leaf_envelope(length: int) -> tuple[bytes, bytes]:
    """Bytes around a chunk of ``length`` bytes forming a dag-pb UnixFS File leaf.

    The leaf block is ``prefix + chunk + suffix``; returning the two parts lets
    callers hash (or write) the chunk in place without concatenating.
    """
    length_varint = encode_varint(length)
    inner = b"\x08\x02"  # Type = File
    inner_data_hdr = b"\x12" + length_varint if length else b""  # Data omitted when empty
    suffix = b"\x18" + length_varint  # filesize, always present
    unixfs_len = len(inner) + len(inner_data_hdr) + length + len(suffix)
    prefix = b"\x0a" + encode_varint(unixfs_len) + inner + inner_data_hdr
    return prefix, suffix


def hash_leaf(
    chunk: BytesLike,
    *,
    raw: bool,
    cid_version: int,
    envelope: tuple[bytes, bytes] | None = None,
) -> Link:
    """Hash one chunk as a leaf block and return its :class:`Link`.

    Raw leaves always get a CIDv1 ``raw`` CID (as go-cid's V0Builder does for
    non-dag-pb codecs). ``envelope`` may pass a precomputed
    :func:`leaf_envelope` for ``len(chunk)``.
    """
    n = len(chunk)
    if raw:
        return Link(binary_cid(1, CODEC_RAW, hashlib.sha256(chunk).digest()), n, n)
    prefix, suffix = envelope if envelope is not None else leaf_envelope(n)
    h = hashlib.sha256(prefix)
    h.update(chunk)
    h.update(suffix)
    return Link(
        binary_cid(cid_version, CODEC_DAG_PB, h.digest()),
        len(prefix) + n + len(suffix),
        n,
    )


def encode_internal_node(children: Sequence[Link]) -> bytes:
    """Encode an internal UnixFS File node (dag-pb) linking ``children`` in order."""
    parts: list[bytes] = []
    for child in children:
        link = (
            b"\x0a"
            + encode_varint(len(child.cid))
            + child.cid
            + b"\x12\x00"  # Name = "" (Kubo always writes it)
            + b"\x18"
            + encode_varint(child.tsize)
        )
        parts.append(b"\x12" + encode_varint(len(link)) + link)
    filesize = sum(c.filesize for c in children)
    unixfs = bytearray(b"\x08\x02\x18")
    unixfs += encode_varint(filesize)
    for child in children:
        unixfs += b"\x20"
        unixfs += encode_varint(child.filesize)
    parts.append(b"\x0a" + encode_varint(len(unixfs)) + bytes(unixfs))
    return b"".join(parts)


@dataclass(slots=True)
class TreeNode:
    """An internal node of a built DAG: its link, block bytes and children.

    ``children`` holds nested TreeNodes or ints (indexes into the leaf list).
    """

    link: Link
    block: bytes
    children: list[TreeNode | int] = field(default_factory=list)


def balanced_layout(
    leaves: Sequence[Link], *, max_links: int, cid_version: int
) -> tuple[Link, TreeNode | int]:
    """Arrange ``leaves`` (in file order) exactly like boxo's balanced builder.

    Returns the root link and the tree (an int when the root is leaf 0).
    Recursion depth is the tree depth, i.e. log(len(leaves)) / log(max_links).
    """
    if not leaves:
        raise ValueError("a DAG needs at least one leaf (the empty file has one)")
    if max_links < 2:
        raise ValueError("max_links must be at least 2")
    n = len(leaves)
    pos = 1

    def link_of(item: TreeNode | int) -> Link:
        return leaves[item] if isinstance(item, int) else item.link

    def commit(children: list[TreeNode | int]) -> TreeNode:
        links = [link_of(c) for c in children]
        block = encode_internal_node(links)
        digest = hashlib.sha256(block).digest()
        link = Link(
            binary_cid(cid_version, CODEC_DAG_PB, digest),
            len(block) + sum(lk.tsize for lk in links),
            sum(lk.filesize for lk in links),
        )
        return TreeNode(link, block, children)

    def fill(children: list[TreeNode | int], depth: int) -> TreeNode:
        nonlocal pos
        while len(children) < max_links and pos < n:
            if depth == 1:
                children.append(pos)
                pos += 1
            else:
                children.append(fill([], depth - 1))
        return commit(children)

    root: TreeNode | int = 0
    depth = 1
    while pos < n:
        root = fill([root], depth)
        depth += 1
    return link_of(root), root


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class PBLink:
    """A decoded dag-pb link."""

    cid: bytes
    name: bytes
    tsize: int | None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb node: links in order and the (optional) Data bytes."""

    links: tuple[PBLink, ...]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS fields fedstore uses (mode/mtime/fanout are ignored)."""

    type: int
    data: bytes
    filesize: int | None
    blocksizes: tuple[int, ...]


def _fields(buf: BytesLike, what: str) -> list[tuple[int, int, int | bytes]]:
    """Split a protobuf message into (field, wiretype, value) triples."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            key, pos = decode_varint(buf, pos)
            fnum, wtype = key >> 3, key & 7
            if fnum == 0:
                raise FormatError(f"{what}: field number 0")
            if wtype == 0:
                value, pos = decode_varint(buf, pos)
                out.append((fnum, wtype, value))
            elif wtype == 2:
                length, pos = decode_varint(buf, pos)
                if pos + length > end:
                    raise FormatError(f"{what}: field {fnum} runs past the end of the block")
                out.append((fnum, wtype, bytes(buf[pos : pos + length])))
                pos += length
            else:
                raise FormatError(f"{what}: unsupported protobuf wire type {wtype}")
    except FormatError as exc:
        if str(exc).startswith(what):
            raise
        raise FormatError(f"{what}: {exc}") from exc
    return out


def decode_pbnode(block: BytesLike) -> PBNode:
    """Decode a dag-pb block; raises FormatError when it is not valid dag-pb."""
    links: list[PBLink] = []
    data: bytes | None = None
    for fnum, wtype, value in _fields(block, "dag-pb node"):
        if fnum == 2 and wtype == 2 and isinstance(value, bytes):
            links.append(_decode_pblink(value))
        elif fnum == 1 and wtype == 2 and isinstance(value, bytes):
            if data is not None:
                raise FormatError("dag-pb node: Data field repeated")
            data = value
        else:
            raise FormatError(f"dag-pb node: unexpected field {fnum} (wire type {wtype})")
    return PBNode(tuple(links), data)


def _decode_pblink(buf: bytes) -> PBLink:
    cid: bytes | None = None
    name = b""
    tsize: int | None = None
    for fnum, wtype, value in _fields(buf, "dag-pb link"):
        if fnum == 1 and wtype == 2 and isinstance(value, bytes):
            cid = value
        elif fnum == 2 and wtype == 2 and isinstance(value, bytes):
            name = value
        elif fnum == 3 and wtype == 0 and isinstance(value, int):
            tsize = value
        else:
            raise FormatError(f"dag-pb link: unexpected field {fnum} (wire type {wtype})")
    if cid is None:
        raise FormatError("dag-pb link without a Hash")
    return PBLink(cid, name, tsize)


def decode_unixfs(buf: BytesLike) -> UnixFSData:
    """Decode UnixFS ``Data`` bytes; unknown optional fields are skipped."""
    utype: int | None = None
    data = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    for fnum, _wtype, value in _fields(buf, "UnixFS data"):
        if fnum == 1 and isinstance(value, int):
            utype = value
        elif fnum == 2 and isinstance(value, bytes):
            data = value
        elif fnum == 3 and isinstance(value, int):
            filesize = value
        elif fnum == 4 and isinstance(value, int):
            blocksizes.append(value)
        elif fnum == 4 and isinstance(value, bytes):  # packed encoding
            pos = 0
            while pos < len(value):
                size, pos = decode_varint(value, pos)
                blocksizes.append(size)
        elif fnum in (1, 2, 3, 4):
            raise FormatError(f"UnixFS data: field {fnum} has the wrong wire type")
    if utype is None:
        raise FormatError("UnixFS data without a Type")
    return UnixFSData(utype, data, filesize, tuple(blocksizes))
