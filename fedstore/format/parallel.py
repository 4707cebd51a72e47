"""Worker threads for encoding and decoding independent pieces of a checkpoint.

zstd, numpy copies and byte shuffles release the GIL, so the pieces of one
checkpoint can be worked on by several threads at once. The number of
threads never changes the bytes produced: every piece is encoded from its
own input alone, and results are always consumed in input order.

The count comes from the ``threads`` argument of the codec functions, else
$FEDSTORE_FORMAT_THREADS, else the number of CPUs (at most
:data:`MAX_DEFAULT_THREADS`). 1 means no worker threads at all.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from fedstore.errors import ConfigError

__all__ = ["MAX_DEFAULT_THREADS", "THREADS_ENV", "ordered_map", "resolve_threads"]

T = TypeVar("T")
R = TypeVar("R")

THREADS_ENV = "FEDSTORE_FORMAT_THREADS"
MAX_DEFAULT_THREADS = 4
#: Upper bound for an explicit thread count (more buys nothing and costs memory).
MAX_THREADS = 64

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def resolve_threads(threads: int | None) -> int:
    """The worker count to use: *threads*, else $FEDSTORE_FORMAT_THREADS, else the CPUs."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        return min(threads, MAX_THREADS)
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{THREADS_ENV}={env!r} is not a positive integer")
        return min(value, MAX_THREADS)
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_THREADS))


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="fedstore-format"
            )
        return pool


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by up to *threads* workers.

    At most ``2 * threads`` results are computed ahead of the consumer, which
    bounds the memory held by finished but unconsumed results. With
    ``threads == 1`` everything runs in the calling thread. An exception in
    ``fn`` is raised when its result is reached; the work not yet started is
    then cancelled.
    """
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    pool = _pool(threads)
    window = 2 * threads
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
