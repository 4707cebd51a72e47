"""Async facades over synchronous objects: each method runs in a worker thread.

fedstore's catalog and local store are synchronous (SQLAlchemy, file I/O,
compression, hashing); trio code must not run them on the event loop. A
facade class derives from :class:`ThreadFacade` and lists the sync methods it
exposes, one line each, typed from the sync signature::

    class AsyncCatalog(ThreadFacade[Catalog]):
        add_checkpoint = in_thread(Catalog.add_checkpoint)

``await acat.add_checkpoint(1, cid)`` then runs ``catalog.add_checkpoint(1,
cid)`` with :func:`trio.to_thread.run_sync` on the facade's own
:class:`trio.CapacityLimiter`, and mypy checks the arguments and the result
exactly as for the sync method (ParamSpec), with nothing written twice.
Every facade has its own limiter, so a burst of calls to one (say the
catalog, under a flood of announcements) cannot take every thread of trio's
default limiter from the others.

Calls are not cancellable once started: the thread finishes (its
transaction commits or rolls back) and cancellation takes effect when the
call returns.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

import trio

__all__ = ["DEFAULT_THREADS", "ThreadFacade", "in_thread"]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")
#: ThreadFacade is covariant: a facade over a Catalog is one over each of its bases, so
#: ``in_thread`` twins of methods a base (a mixin) defines type-check too.
S_co = TypeVar("S_co", covariant=True)

#: Worker threads per facade unless the facade is given a limiter.
DEFAULT_THREADS = 4


class ThreadFacade(Generic[S_co]):
    """Base of an async facade over *sync*; methods run on :attr:`limiter`'s threads.

    *limiter* defaults to a new ``trio.CapacityLimiter(DEFAULT_THREADS)`` of
    this facade's own; pass one to share it between facades deliberately.
    """

    def __init__(self, sync: S_co, *, limiter: trio.CapacityLimiter | None = None) -> None:
        self.sync = sync
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(DEFAULT_THREADS)

    async def run_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker thread on this facade's limiter."""
        call = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self.limiter)


class in_thread(Generic[S, P, T]):  # noqa: N801 (used like a function, as functools.partial is)
    """Descriptor: the sync *method*, awaitable on a :class:`ThreadFacade` over its class.

    Reading the attribute on a facade instance gives an ``async`` function
    with the method's parameters (without ``self``) returning its result;
    reading it on the class gives the descriptor (:attr:`method` is the
    wrapped function, which completeness tests compare against).
    """

    def __init__(self, method: Callable[Concatenate[S, P], T]) -> None:
        self.method = method
        self.__doc__ = method.__doc__
        self._name = getattr(method, "__name__", "method")

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self, obj: ThreadFacade[S], owner: type[Any] | None = None
    ) -> Callable[P, Awaitable[T]]: ...

    def __get__(
        self, obj: ThreadFacade[S] | None, owner: type[Any] | None = None
    ) -> Self | Callable[P, Awaitable[T]]:
        if obj is None:
            return self
        method, sync, limiter = self.method, obj.sync, obj.limiter

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            bound = functools.partial(method, sync, *args, **kwargs)
            return await trio.to_thread.run_sync(bound, limiter=limiter)

        call.__name__ = self._name
        call.__qualname__ = f"{type(obj).__qualname__}.{self._name}"
        call.__doc__ = self.__doc__
        return call
