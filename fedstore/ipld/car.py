"""CARv1 archives of single-file UnixFS DAGs: writing, and verified reading.

Writing (:func:`iter_car`, :func:`write_car`) produces what ``ipfs dag export``
of an ``ipfs add``-ed file produces: a DAG-CBOR header ``{"roots": [root],
"version": 1}`` then ``varint(len) | CID | block`` sections in depth-first
pre-order (root first, leaves in file order), each distinct block once. For a
file the DAG is computed in a first pass (only the leaf links stay in memory)
and blocks are streamed from a second pass; if the file changes in between,
:class:`~fedstore.errors.IntegrityError` is raised.

Reading (:class:`CarReader`, :func:`iter_car_verified`, :func:`read_car_verified`)
trusts nothing: every length is capped, every block's sha2-256 must equal its
CID, the DAG must be complete from the root and the UnixFS sizes consistent,
before the first file byte is yielded. Blocks are kept in a spooled temporary
file (memory up to 16 MiB, then disk). Malformed or truncated input raises
:class:`~fedstore.errors.FormatError`; hash mismatches and missing blocks raise
:class:`~fedstore.errors.IntegrityError`; size caps raise
:class:`~fedstore.errors.SizeLimitError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from fedstore.errors import FormatError, IntegrityError, InvalidCIDError, SizeLimitError
from fedstore.ipld.blocks import decode_block
from fedstore.ipld.cid import (
    BuiltDag,
    CidBuilder,
    DagParams,
    ParsedCid,
    build_file_dag,
    cid_to_str,
    parse_cid,
    read_binary_cid,
)
from fedstore.ipld.unixfs import (
    BytesLike,
    TreeNode,
    encode_varint,
    hash_leaf,
    leaf_envelope,
)

__all__ = [
    "MAX_BLOCK_SIZE",
    "MAX_HEADER_SIZE",
    "CarReader",
    "car_header",
    "iter_car",
    "iter_car_verified",
    "read_car_verified",
    "write_car",
]

#: Largest block accepted when reading (bitswap's limit is 2 MiB).
MAX_BLOCK_SIZE = 4 * 1024 * 1024
#: Largest CAR header accepted when reading (a one-root header is ~60 bytes).
MAX_HEADER_SIZE = 64 * 1024
#: Deepest DAG accepted (174-ary depth 8 is far beyond any file).
MAX_DAG_DEPTH = 32
#: Default file-size cap of read_car_verified (its result is one bytes object).
DEFAULT_MAX_READ = 2 * 1024 * 1024 * 1024
_SPOOL_IN_MEMORY = 16 * 1024 * 1024
_MAX_CBOR_DEPTH = 8

Source = str | os.PathLike[str] | bytes | bytearray | memoryview


# --------------------------------------------------------------------------- writing


def car_header(root: ParsedCid | str) -> bytes:
    """``varint(len) | DAG-CBOR {"roots": [root], "version": 1}``."""
    cid = root if isinstance(root, ParsedCid) else parse_cid(root)
    link = b"\x00" + bytes(cid)  # tag 42 payload: multibase identity prefix + CID
    body = (
        b"\xa2"
        + b"\x65roots"
        + b"\x81\xd8\x2a"
        + _cbor_head(2, len(link))
        + link
        + b"\x67version\x01"
    )
    return encode_varint(len(body)) + body


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((major << 5 | extra,)) + n.to_bytes(width, "big")
    raise ValueError("CBOR length too large")


def _dag_for(source: Source, params: DagParams) -> BuiltDag:
    if isinstance(source, bytes | bytearray | memoryview):
        builder = CidBuilder(params)
        builder.update(source)
        return builder.build()
    return build_file_dag(source, params)


def iter_car(
    source: Source, params: DagParams | None = None, *, cid_version: int = 0
) -> Iterator[bytes]:
    """Yield the CARv1 of ``source`` (a path or bytes) piece by piece.

    The root CID equals ``cid_of_file``/``cid_of_bytes`` with the same params.
    Memory stays bounded by one chunk plus the DAG's link info.
    """
    dag = _dag_for(source, params or DagParams.kubo(cid_version))
    return _car_pieces(source, dag)


def _car_pieces(source: Source, dag: BuiltDag) -> Iterator[bytes]:
    yield car_header(cid_to_str(dag.root.cid))
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        yield from _sections(dag, lambda off, n: bytes(view[off : off + n]))
        return
    with open(source, "rb") as f:

        def read_at(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)

        yield from _sections(dag, read_at)


def _sections(dag: BuiltDag, read_at: Callable[[int, int], bytes]) -> Iterator[bytes]:
    """Blocks in depth-first pre-order, each distinct CID once."""
    params = dag.params
    seen: set[bytes] = set()
    stack: list[TreeNode | int] = [dag.tree]
    while stack:
        item = stack.pop()
        if isinstance(item, TreeNode):
            if item.link.cid not in seen:
                seen.add(item.link.cid)
                yield encode_varint(len(item.link.cid) + len(item.block)) + item.link.cid
                yield item.block
            stack.extend(reversed(item.children))
            continue
        leaf = dag.leaves[item]
        if leaf.cid in seen:
            continue
        seen.add(leaf.cid)
        chunk = read_at(item * params.chunk_size, leaf.filesize)
        again = hash_leaf(chunk, raw=params.leaves_raw, cid_version=params.cid_version)
        if again.cid != leaf.cid:
            raise IntegrityError(
                f"the file changed while its CAR was written (chunk {item} differs); retry"
            )
        yield encode_varint(len(leaf.cid) + leaf.tsize) + leaf.cid
        if params.leaves_raw:
            yield chunk
        else:
            prefix, suffix = leaf_envelope(len(chunk))
            yield prefix
            yield chunk
            yield suffix


def write_car(
    source: Source,
    dest: str | os.PathLike[str] | IO[bytes],
    params: DagParams | None = None,
    *,
    cid_version: int = 0,
) -> str:
    """Write the CARv1 of ``source`` to ``dest`` (a path or binary stream); return the root CID."""
    dag = _dag_for(source, params or DagParams.kubo(cid_version))
    if isinstance(dest, str | os.PathLike):
        with open(dest, "wb") as out:
            out.writelines(_car_pieces(source, dag))
    else:
        dest.writelines(_car_pieces(source, dag))
    return dag.cid


# --------------------------------------------------------------------------- reading


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        got = 0 if data is None else len(data)
        raise FormatError(f"truncated CAR: {what} needs {n} bytes, only {got} left")
    return data


def _read_varint(stream: IO[bytes], what: str, *, eof_ok: bool = False) -> int | None:
    value = 0
    for i in range(9):
        b = stream.read(1)
        if not b:
            if i == 0 and eof_ok:
                return None
            raise FormatError(f"truncated CAR: {what} length varint cut short")
        byte = b[0]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise FormatError(f"malformed CAR: {what} length varint not minimal")
            return value
    raise FormatError(f"malformed CAR: {what} length varint longer than 9 bytes")


def _cbor_item(buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    """Decode the DAG-CBOR subset CAR headers use (ints, strings, lists, maps, tag 42)."""
    if depth > _MAX_CBOR_DEPTH:
        raise FormatError("malformed CAR header: nested too deeply")
    if pos >= len(buf):
        raise FormatError("malformed CAR header: truncated CBOR")
    major, info = buf[pos] >> 5, buf[pos] & 0x1F
    pos += 1
    if info < 24:
        arg = info
    elif info in (24, 25, 26, 27):
        width = 1 << (info - 24)
        if pos + width > len(buf):
            raise FormatError("malformed CAR header: truncated CBOR")
        arg = int.from_bytes(buf[pos : pos + width], "big")
        pos += width
    else:
        raise FormatError("malformed CAR header: indefinite or reserved CBOR length")
    if major == 0:
        return arg, pos
    if major in (2, 3):
        if pos + arg > len(buf):
            raise FormatError("malformed CAR header: truncated CBOR string")
        raw = bytes(buf[pos : pos + arg])
        pos += arg
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as exc:
            raise FormatError("malformed CAR header: invalid UTF-8") from exc
    if major == 4:
        items = []
        for _ in range(min(arg, len(buf))):
            item, pos = _cbor_item(buf, pos, depth + 1)
            items.append(item)
        if len(items) != arg:
            raise FormatError("malformed CAR header: truncated CBOR array")
        return items, pos
    if major == 5:
        out: dict[Any, Any] = {}
        for _ in range(min(arg, len(buf))):
            key, pos = _cbor_item(buf, pos, depth + 1)
            val, pos = _cbor_item(buf, pos, depth + 1)
            if not isinstance(key, str) or key in out:
                raise FormatError("malformed CAR header: bad or repeated map key")
            out[key] = val
        if len(out) != arg:
            raise FormatError("malformed CAR header: truncated CBOR map")
        return out, pos
    if major == 6 and arg == 42:
        link, pos = _cbor_item(buf, pos, depth + 1)
        if not isinstance(link, bytes) or not link.startswith(b"\x00"):
            raise FormatError("malformed CAR header: bad CID link")
        try:
            cid, end = read_binary_cid(link, 1)
        except InvalidCIDError as exc:
            raise FormatError(f"CAR root is not usable: {exc}") from exc
        if end != len(link):
            raise FormatError("malformed CAR header: bytes after the root CID")
        return cid, pos
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], pos
    raise FormatError(f"malformed CAR header: unsupported CBOR item (major type {major})")


def _parse_header(body: memoryview) -> ParsedCid:
    header, end = _cbor_item(body, 0, 0)
    if end != len(body):
        raise FormatError("malformed CAR header: trailing bytes")
    if not isinstance(header, dict):
        raise FormatError("malformed CAR header: not a map")
    version = header.get("version")
    if version == 2:
        raise FormatError("CARv2 is not supported; export a CARv1 (ipfs dag export)")
    if version != 1:
        raise FormatError(f"unsupported CAR version {version!r} (expected 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or len(roots) != 1 or not isinstance(roots[0], ParsedCid):
        raise FormatError("CAR must name exactly one root CID")
    return roots[0]


class CarReader:
    """Iterate a CARv1 stream's blocks, each checked against its CID.

    The header is read on construction (:attr:`root`); :meth:`blocks` yields
    ``(cid, block_bytes)`` pairs and raises IntegrityError on the first block
    whose sha2-256 differs from its CID. Only sha2-256 dag-pb/raw CIDs are accepted.
    """

    def __init__(self, stream: IO[bytes], *, max_block_size: int = MAX_BLOCK_SIZE) -> None:
        self._stream = stream
        self._max_block = max_block_size
        hlen = _read_varint(stream, "header")
        assert hlen is not None
        if hlen == 0 or hlen > MAX_HEADER_SIZE:
            raise FormatError(f"malformed CAR: header length {hlen} (at most {MAX_HEADER_SIZE})")
        self.root = _parse_header(memoryview(_read_exact(stream, hlen, "header")))

    def blocks(self) -> Iterator[tuple[ParsedCid, bytes]]:
        index = 0
        while True:
            length = _read_varint(self._stream, f"block {index}", eof_ok=True)
            if length is None:
                return
            if length > self._max_block + 64:
                raise FormatError(
                    f"CAR block {index} is {length} bytes, over the {self._max_block}-byte limit"
                )
            section = _read_exact(self._stream, length, f"block {index}")
            try:
                cid, start = read_binary_cid(section, 0)
            except InvalidCIDError as exc:
                raise FormatError(f"CAR block {index}: {exc}") from exc
            block = section[start:]
            if hashlib.sha256(block).digest() != cid.digest:
                raise IntegrityError(f"CAR block {index} does not match its CID {cid}")
            yield cid, block
            index += 1


@dataclass(slots=True)
class _Entry:
    offset: int  # of the file bytes inside the spool
    length: int
    links: tuple[ParsedCid, ...]
    blocksizes: tuple[int, ...]
    filesize: int | None


def _index_block(cid: ParsedCid, block: bytes) -> tuple[_Entry, bytes]:
    """Check a block's UnixFS shape; return its entry and its file bytes (leaves).

    The block is decoded by :func:`fedstore.ipld.blocks.decode_block`; a CAR's
    internal nodes must also state the size under every link (Kubo's do),
    since :func:`_check_dag` proves the file's size from them.
    """
    decoded = decode_block(cid, block)
    if len(decoded.blocksizes) != len(decoded.links):
        raise FormatError(
            f"block {cid}: {len(decoded.links)} links but {len(decoded.blocksizes)} sizes"
        )
    links = tuple(link.cid for link in decoded.links)
    expected = len(decoded.data) + sum(decoded.blocksizes)
    entry = _Entry(0, len(decoded.data), links, decoded.blocksizes, expected)
    return entry, decoded.data


def _key(cid: ParsedCid) -> tuple[int, bytes]:
    return cid.codec, cid.digest


def iter_car_verified(
    source: BytesLike | IO[bytes],
    *,
    expected_root: str | ParsedCid | None = None,
    max_size: int | None = None,
    spool_dir: str | None = None,
) -> Iterator[bytes]:
    """Yield the file stored in a CARv1, only after proving it complete and intact.

    ``expected_root`` (the CID you asked for) must address the CAR's root block
    (v0 and v1 forms of one block are equal). ``max_size`` caps the file size
    and the bytes buffered while reading. Blocks that are not reachable from the
    root are ignored (they still count toward the cap). Without ``max_size`` a
    CAR whose blocks link the same subtree many times can describe a huge file
    from few bytes; pass a cap for untrusted input.
    """
    stream: IO[bytes] = (
        io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    )
    reader = CarReader(stream)
    root = reader.root
    if expected_root is not None:
        want = expected_root if isinstance(expected_root, ParsedCid) else parse_cid(expected_root)
        if not want.same_block(root):
            raise IntegrityError(f"CAR root {root} is not the requested CID {want}")
    buffered_cap = None if max_size is None else max_size + max_size // 32 + (1 << 20)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=spool_dir) as spool:
        index: dict[tuple[int, bytes], _Entry] = {}
        buffered = 0
        for cid, block in reader.blocks():
            if _key(cid) in index:
                continue
            entry, data = _index_block(cid, block)
            buffered += len(block)
            if buffered_cap is not None and buffered > buffered_cap:
                raise SizeLimitError(f"CAR holds more than the {max_size}-byte limit allows")
            entry.offset = spool.tell()
            spool.write(data)
            index[_key(cid)] = entry
        total = _check_dag(root, index)
        if max_size is not None and total > max_size:
            raise SizeLimitError(f"file in CAR is {total} bytes, over the {max_size}-byte limit")
        yield from _file_bytes(root, index, spool)


def _check_dag(root: ParsedCid, index: dict[tuple[int, bytes], _Entry]) -> int:
    """Prove every block reachable from ``root`` is present and sizes agree; return file size."""
    sizes: dict[tuple[int, bytes], int] = {}
    # iterative post-order: (cid, parent description, depth, expanded)
    stack: list[tuple[ParsedCid, str, int, bool]] = [(root, "the root", 0, False)]
    while stack:
        cid, parent, depth, expanded = stack.pop()
        key = _key(cid)
        if key in sizes and not expanded:
            continue
        entry = index.get(key)
        if entry is None:
            raise IntegrityError(
                f"CAR is incomplete: block {cid} (linked from {parent}) is missing"
            )
        if depth > MAX_DAG_DEPTH:
            raise FormatError(f"DAG deeper than {MAX_DAG_DEPTH} levels")
        if not expanded and entry.links:
            stack.append((cid, parent, depth, True))
            stack.extend((c, str(cid), depth + 1, False) for c in entry.links)
            continue
        for child, declared in zip(entry.links, entry.blocksizes, strict=True):
            if sizes[_key(child)] != declared:
                raise IntegrityError(
                    f"block {cid} says child {child} holds {declared} bytes, "
                    f"it holds {sizes[_key(child)]}"
                )
        sizes[key] = entry.length + sum(entry.blocksizes)
    return sizes[_key(root)]


def _file_bytes(
    root: ParsedCid, index: dict[tuple[int, bytes], _Entry], spool: IO[bytes]
) -> Iterator[bytes]:
    stack: list[ParsedCid] = [root]
    while stack:
        entry = index[_key(stack.pop())]
        if entry.length:
            spool.seek(entry.offset)
            yield _read_exact(spool, entry.length, "spooled block")
        stack.extend(reversed(entry.links))


def read_car_verified(
    source: BytesLike | IO[bytes],
    *,
    expected_root: str | ParsedCid | None = None,
    max_size: int | None = DEFAULT_MAX_READ,
) -> bytes:
    """The file stored in a CARv1, as bytes (see :func:`iter_car_verified`).

    ``max_size`` defaults to 2 GiB since the result is held in memory.
    """
    return b"".join(iter_car_verified(source, expected_root=expected_root, max_size=max_size))
