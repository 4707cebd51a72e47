"""Block-level view of UnixFS file DAGs: produce a file's blocks, decode a block's links.

:mod:`fedstore.ipld.cid` computes a file's CID without keeping any block. Block
exchange (bitswap) needs the blocks themselves, so this module

* cuts a file (or bytes) into the *same* blocks Kubo's ``ipfs add`` makes
  (it drives :func:`fedstore.ipld.unixfs.hash_leaf`, :func:`~fedstore.ipld.unixfs.leaf_envelope`
  and :func:`~fedstore.ipld.unixfs.balanced_layout`, the very functions
  :class:`~fedstore.ipld.cid.CidBuilder` uses, so the root CID is byte-identical)
  and hands each ``(binary CID, block bytes)`` to a callback, leaves first,
  internal nodes last, holding at most one chunk in memory;
* decodes one fetched block into what a DAG walker needs: the child links
  (in file order) and the file bytes the block itself carries.

Pure apart from reading the source file. Blocks are addressed by their binary
CID (``bytes(ParsedCid)``); the sha2-256 digest is ``cid[-32:]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fedstore.errors import FormatError, InvalidCIDError
from fedstore.ipld.cid import DagParams, ParsedCid, cid_from_bytes, cid_to_str
from fedstore.ipld.unixfs import (
    CODEC_RAW,
    UNIXFS_FILE,
    UNIXFS_RAW,
    BytesLike,
    Link,
    TreeNode,
    balanced_layout,
    decode_pbnode,
    decode_unixfs,
    hash_leaf,
    leaf_envelope,
)

__all__ = [
    "BlockSink",
    "ChildLink",
    "DagSummary",
    "DecodedBlock",
    "decode_block",
    "iter_internal_blocks",
    "write_dag_blocks",
]

#: Called once per block: (binary CID, block bytes).
BlockSink = Callable[[bytes, bytes], None]

_READ = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DagSummary:
    """What :func:`write_dag_blocks` built: root CID (string and binary), file size, block count."""

    cid: str
    root: bytes
    size: int
    blocks: int


def iter_internal_blocks(tree: TreeNode | int) -> Iterator[tuple[bytes, bytes]]:
    """``(binary CID, block)`` of every internal node of a built tree, children before parents."""
    if isinstance(tree, int):
        return
    stack: list[tuple[TreeNode, bool]] = [(tree, False)]
    while stack:
        node, visited = stack.pop()
        if visited:
            yield node.link.cid, node.block
            continue
        stack.append((node, True))
        for child in reversed(node.children):
            if isinstance(child, TreeNode):
                stack.append((child, False))


def _chunks_of(source: BytesLike | os.PathLike[str] | str, chunk_size: int) -> Iterator[BytesLike]:
    """Yield the file's chunks exactly as CidBuilder cuts them (one empty chunk for b"")."""
    if isinstance(source, bytes | bytearray | memoryview):
        mv = memoryview(source).cast("B")
        if len(mv) == 0:
            yield b""
            return
        for off in range(0, len(mv), chunk_size):
            yield mv[off : off + chunk_size]
        return
    read_size = max(1, _READ // chunk_size) * chunk_size
    produced = False
    pending = b""
    with open(source, "rb") as f:
        while True:
            data = f.read(read_size)
            if not data:
                break
            if pending:
                data = pending + data
                pending = b""
            mv = memoryview(data)
            full = len(mv) - len(mv) % chunk_size
            for off in range(0, full, chunk_size):
                produced = True
                yield mv[off : off + chunk_size]
            if full < len(mv):
                pending = bytes(mv[full:])
    if pending or not produced:
        yield pending


def write_dag_blocks(
    source: BytesLike | os.PathLike[str] | str,
    params: DagParams,
    sink: BlockSink,
) -> DagSummary:
    """Cut *source* into its UnixFS blocks and pass each to *sink*; return the root.

    The root CID equals ``cid_of_bytes``/``cid_of_file`` with the same
    *params* (Kubo's ``ipfs add``). Memory: one read buffer (4 MiB) plus about
    100 bytes of link information per chunk and the internal nodes
    (a few KiB per 174 chunks). OS errors from reading propagate.
    """
    leaves: list[Link] = []
    raw = params.leaves_raw
    full_env = None if raw else leaf_envelope(params.chunk_size)
    size = 0
    count = 0
    for chunk in _chunks_of(source, params.chunk_size):
        n = len(chunk)
        env = full_env if n == params.chunk_size else (None if raw else leaf_envelope(n))
        link = hash_leaf(chunk, raw=raw, cid_version=params.cid_version, envelope=env)
        if raw:
            block = bytes(chunk)
        else:
            assert env is not None
            block = b"".join((env[0], chunk, env[1]))
        sink(link.cid, block)
        leaves.append(link)
        size += n
        count += 1
    root, tree = balanced_layout(leaves, max_links=params.max_links, cid_version=params.cid_version)
    for cid, block in iter_internal_blocks(tree):
        sink(cid, block)
        count += 1
    return DagSummary(cid=cid_to_str(root.cid), root=root.cid, size=size, blocks=count)


@dataclass(frozen=True, slots=True)
class ChildLink:
    """A link from a file node to a child block, in file order."""

    cid: ParsedCid
    #: ``PBLink.Tsize`` when present: the child's block size plus everything below it.
    tsize: int | None


@dataclass(frozen=True, slots=True)
class DecodedBlock:
    """A file DAG block as a walker sees it.

    The file bytes under this block are ``data`` followed by the bytes of
    each child in ``links`` order (UnixFS semantics). For a leaf ``links``
    is empty; for a Kubo internal node ``data`` is empty.
    """

    links: tuple[ChildLink, ...]
    data: bytes
    #: UnixFS ``filesize`` when the block states it (None for raw leaves).
    filesize: int | None
    #: UnixFS ``blocksizes``: the file bytes under each link (empty for leaves).
    blocksizes: tuple[int, ...] = ()


def decode_block(cid: ParsedCid, block: bytes) -> DecodedBlock:
    """Decode a block that is part of a UnixFS *file*: fedstore's one block decoder.

    Bitswap's DAG walk and the CAR reader (:mod:`fedstore.ipld.car`) both use it.

    Raw blocks (codec 0x55) are file bytes. dag-pb blocks must carry UnixFS
    ``File`` (or legacy ``Raw``) data; a directory or anything else raises
    :class:`~fedstore.errors.FormatError` (fedstore exchanges files only).
    The caller has already checked that *block* hashes to *cid*.
    """
    if cid.codec == CODEC_RAW:
        return DecodedBlock((), block, None)
    node = decode_pbnode(block)
    if node.data is None:
        raise FormatError(f"block {cid} is dag-pb without UnixFS data: not a file")
    ufs = decode_unixfs(node.data)
    if ufs.type not in (UNIXFS_FILE, UNIXFS_RAW):
        raise FormatError(
            f"block {cid} is UnixFS type {ufs.type}, not a file (directories are not supported)"
        )
    links: list[ChildLink] = []
    for link in node.links:
        try:
            child = cid_from_bytes(link.cid)
        except InvalidCIDError as exc:
            raise FormatError(f"block {cid} links to an unsupported CID: {exc}") from exc
        links.append(ChildLink(child, link.tsize))
    if links and ufs.blocksizes and len(ufs.blocksizes) != len(links):
        raise FormatError(
            f"block {cid} has {len(links)} links but {len(ufs.blocksizes)} blocksizes"
        )
    if ufs.filesize is not None and (ufs.blocksizes or not links):
        stated = len(ufs.data) + sum(ufs.blocksizes)
        if ufs.filesize != stated:
            raise FormatError(
                f"block {cid}: filesize {ufs.filesize} but its content adds up to {stated}"
            )
    return DecodedBlock(tuple(links), ufs.data, ufs.filesize, tuple(ufs.blocksizes))
