"""Blosc-style byte shuffle, applied per tensor.

A tensor of n elements of itemsize s is stored as s planes of n bytes: plane k
holds byte k of every element (in little-endian order). For float weights the
planes holding sign and exponent bits are highly repetitive, which is what
lets zstd beat its plain ratio on them; the low mantissa planes stay random.
Tensors with itemsize 1 are stored as is.

Both directions work on bounded chunks so the working set stays in cache and
no second full-size buffer is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHUNK_ELEMENTS = 1 << 16
PLANE_CHUNK_BYTES = 1 << 20


def shuffle_into(dst: np.ndarray, src: np.ndarray) -> None:
    """Write the shuffled bytes of C-contiguous *src* into uint8 vector *dst*."""
    itemsize = src.dtype.itemsize
    n = src.size
    if dst.shape != (n * itemsize,):
        raise ValueError(f"destination holds {dst.size} bytes, source needs {n * itemsize}")
    elements = src.reshape(-1).view(np.uint8).reshape(n, itemsize)
    planes = dst.reshape(itemsize, n)
    for start in range(0, n, CHUNK_ELEMENTS):
        stop = min(n, start + CHUNK_ELEMENTS)
        block = elements[start:stop]
        for k in range(itemsize):
            planes[k, start:stop] = block[:, k]


def unshuffle_into(dst: np.ndarray, shuffled: np.ndarray) -> None:
    """Inverse of :func:`shuffle_into`: fill C-contiguous *dst* from uint8 *shuffled*."""
    itemsize = dst.dtype.itemsize
    n = dst.size
    if shuffled.shape != (n * itemsize,):
        raise ValueError(f"source holds {shuffled.size} bytes, destination needs {n * itemsize}")
    elements = dst.reshape(-1).view(np.uint8).reshape(n, itemsize)
    planes = shuffled.reshape(itemsize, n)
    for start in range(0, n, CHUNK_ELEMENTS):
        stop = min(n, start + CHUNK_ELEMENTS)
        block = elements[start:stop]
        for k in range(itemsize):
            block[:, k] = planes[k, start:stop]


def read_unshuffled(readinto_exact: Callable[[np.ndarray], None], dst: np.ndarray) -> None:
    """Fill C-contiguous *dst* from a stream of its shuffled bytes.

    *readinto_exact(buf)* must fill the uint8 vector *buf* completely or raise.
    Reads one plane at a time through a bounded scratch buffer, so memory use
    is independent of the tensor size.
    """
    itemsize = dst.dtype.itemsize
    n = dst.size
    elements = dst.reshape(-1).view(np.uint8).reshape(n, itemsize)
    scratch = np.empty(min(n, PLANE_CHUNK_BYTES), dtype=np.uint8)
    for k in range(itemsize):
        for start in range(0, n, PLANE_CHUNK_BYTES):
            stop = min(n, start + PLANE_CHUNK_BYTES)
            chunk = scratch[: stop - start]
            readinto_exact(chunk)
            elements[start:stop, k] = chunk
