"""Blosc-style byte shuffle, applied per tensor in blocks.

A tensor of n elements of itemsize s is cut into blocks of BLOCK_ELEMENTS
elements (the last one shorter). Each block of m elements is stored as s
planes of m bytes: plane k holds byte k of every element of the block (in
little-endian order). For float weights the planes holding sign and exponent
bits are highly repetitive, which is what lets zstd beat its plain ratio on
them; the low mantissa planes stay random. Blocks are large (1 Mi elements)
so each plane spans several 128 KiB zstd blocks and keeps its own entropy
statistics; tensors with itemsize 1 are stored as is.

Blocks bound the memory of streaming decode (one block of scratch) and keep
the copies cache-friendly: inside a block the work goes in chunks of
CACHE_ELEMENTS elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

BLOCK_ELEMENTS = 1 << 20
CACHE_ELEMENTS = 1 << 16


def shuffle_into(dst: np.ndarray, src: np.ndarray) -> None:
    """Write the shuffled bytes of C-contiguous *src* into uint8 vector *dst*."""
    itemsize = src.dtype.itemsize
    n = src.size
    if dst.shape != (n * itemsize,):
        raise ValueError(f"destination holds {dst.size} bytes, source needs {n * itemsize}")
    elements = src.reshape(-1).view(np.uint8).reshape(n, itemsize)
    for start in range(0, n, BLOCK_ELEMENTS):
        stop = min(n, start + BLOCK_ELEMENTS)
        planes = dst[start * itemsize : stop * itemsize].reshape(itemsize, stop - start)
        _block_to_planes(elements[start:stop], planes)


def iter_shuffled(src: np.ndarray) -> Iterator[memoryview]:
    """Yield the shuffled bytes of C-contiguous *src* block by block.

    Every yielded view points into one reused scratch buffer: it is valid only
    until the next item is requested.
    """
    itemsize = src.dtype.itemsize
    n = src.size
    elements = src.reshape(-1).view(np.uint8).reshape(n, itemsize)
    scratch = np.empty(min(n, BLOCK_ELEMENTS) * itemsize, dtype=np.uint8)
    for start in range(0, n, BLOCK_ELEMENTS):
        stop = min(n, start + BLOCK_ELEMENTS)
        block = scratch[: (stop - start) * itemsize]
        _block_to_planes(elements[start:stop], block.reshape(itemsize, stop - start))
        yield block.data


def unshuffle_into(dst: np.ndarray, shuffled: np.ndarray) -> None:
    """Inverse of :func:`shuffle_into`: fill C-contiguous *dst* from uint8 *shuffled*."""
    itemsize = dst.dtype.itemsize
    n = dst.size
    if shuffled.shape != (n * itemsize,):
        raise ValueError(f"source holds {shuffled.size} bytes, destination needs {n * itemsize}")
    elements = dst.reshape(-1).view(np.uint8).reshape(n, itemsize)
    for start in range(0, n, BLOCK_ELEMENTS):
        stop = min(n, start + BLOCK_ELEMENTS)
        planes = shuffled[start * itemsize : stop * itemsize].reshape(itemsize, stop - start)
        _planes_to_block(planes, elements[start:stop])


def read_unshuffled(readinto_exact: Callable[[np.ndarray], None], dst: np.ndarray) -> None:
    """Fill C-contiguous *dst* from a stream of its shuffled bytes.

    *readinto_exact(buf)* must fill the uint8 vector *buf* completely or raise.
    Reads one block at a time into a scratch buffer of at most
    BLOCK_ELEMENTS * itemsize bytes, whatever the tensor size.
    """
    itemsize = dst.dtype.itemsize
    n = dst.size
    elements = dst.reshape(-1).view(np.uint8).reshape(n, itemsize)
    scratch = np.empty(min(n, BLOCK_ELEMENTS) * itemsize, dtype=np.uint8)
    for start in range(0, n, BLOCK_ELEMENTS):
        stop = min(n, start + BLOCK_ELEMENTS)
        block = scratch[: (stop - start) * itemsize]
        readinto_exact(block)
        _planes_to_block(block.reshape(itemsize, stop - start), elements[start:stop])


def _block_to_planes(elements: np.ndarray, planes: np.ndarray) -> None:
    """elements: (m, s) uint8 view; planes: (s, m) uint8 destination."""
    m, itemsize = elements.shape
    for start in range(0, m, CACHE_ELEMENTS):
        stop = min(m, start + CACHE_ELEMENTS)
        chunk = elements[start:stop]
        for k in range(itemsize):
            planes[k, start:stop] = chunk[:, k]


def _planes_to_block(planes: np.ndarray, elements: np.ndarray) -> None:
    """planes: (s, m) uint8 source; elements: (m, s) uint8 destination view."""
    m, itemsize = elements.shape
    for start in range(0, m, CACHE_ELEMENTS):
        stop = min(m, start + CACHE_ELEMENTS)
        chunk = elements[start:stop]
        for k in range(itemsize):
            chunk[:, k] = planes[k, start:stop]
