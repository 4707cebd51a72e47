"""The async facades mirror their sync classes exactly and run on limiters of their own.

The types are checked statically too: ``tests/type_checks/aio_facades.py`` is
part of the mypy run (pyproject ``[tool.mypy] files``).
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from fedstore.aio import ThreadFacade, in_thread
from fedstore.catalog import AsyncCatalog, Catalog
from fedstore.catalog.aio import CATALOG_THREADS
from fedstore.store import AsyncLocalStore, LocalStore

#: Sync methods with a hand-written async counterpart instead of an ``in_thread`` twin.
SPECIAL = {"close": "aclose", "open": "open"}


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, classmethod))
    }


@pytest.mark.parametrize(
    ("sync_cls", "facade_cls"), [(Catalog, AsyncCatalog), (LocalStore, AsyncLocalStore)]
)
def test_every_public_sync_method_has_its_async_twin(sync_cls: type, facade_cls: type) -> None:
    missing, wrong = [], []
    for name, fn in public_methods(sync_cls).items():
        if name in SPECIAL:
            twin = getattr(facade_cls, SPECIAL[name], None)
            if twin is None or not (
                inspect.iscoroutinefunction(twin)
                or inspect.iscoroutinefunction(getattr(twin, "__func__", None))
            ):
                missing.append(name)
            continue
        twin = inspect.getattr_static(facade_cls, name, None)
        if twin is None:
            missing.append(name)
        elif not isinstance(twin, in_thread) or twin.method is not fn:
            wrong.append(name)
    assert missing == [], f"{facade_cls.__name__} lacks async twins of {missing}"
    assert wrong == [], f"{facade_cls.__name__}: {wrong} do not wrap the sync method of that name"


@pytest.mark.parametrize("facade_cls", [AsyncCatalog, AsyncLocalStore])
def test_twins_have_no_hand_written_mirrors(facade_cls: type) -> None:
    """Nothing but the lifecycle is written by hand: every other coroutine is an in_thread."""
    handwritten = {
        name
        for name, value in vars(facade_cls).items()
        if inspect.iscoroutinefunction(value) and not name.startswith("__")
    }
    assert handwritten <= {"aclose", "run"}


async def test_a_twin_is_awaitable_and_keeps_the_docstring(tmp_path: Path) -> None:
    async with await AsyncCatalog.open(tmp_path) as acat:
        assert acat.latest_round.__doc__ == Catalog.latest_round.__doc__
        assert acat.latest_round.__name__ == "latest_round"
        assert await acat.latest_round() is None
        assert await acat.revision() == acat.sync.revision()


async def test_catalog_calls_use_the_catalogs_own_limiter_not_trios_default(
    tmp_path: Path,
) -> None:
    default = trio.to_thread.current_default_thread_limiter()
    async with await AsyncCatalog.open(tmp_path) as acat:
        assert acat.limiter is not default and acat.limiter.total_tokens == CATALOG_THREADS
        other = await AsyncCatalog.open(tmp_path / "other")
        assert other.limiter is not acat.limiter  # one per catalog
        await other.aclose()
        blocker = sqlite3.connect(acat.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # writes now wait in their threads
        try:
            async with trio.open_nursery() as nursery:
                for r in range(CATALOG_THREADS + 2):
                    add = functools.partial(
                        acat.add_checkpoint, cid_version=0, codec="c", raw_size=1, stored_size=1
                    )
                    nursery.start_soon(functools.partial(add, r, f"Qm{r}", path="p"))
                with trio.fail_after(10):
                    await trio.testing.wait_all_tasks_blocked()
                # the catalog's threads are all busy; trio's default limiter is untouched
                assert acat.limiter.borrowed_tokens == CATALOG_THREADS
                assert acat.limiter.statistics().tasks_waiting == 2
                assert default.borrowed_tokens == 0
                blocker.execute("COMMIT")
        finally:
            blocker.close()
        assert await acat.list_rounds() == list(range(CATALOG_THREADS + 2))


async def test_store_facade_and_its_catalog_have_separate_limiters(tmp_path: Path) -> None:
    async with await AsyncLocalStore.open(tmp_path) as store:
        assert isinstance(store, ThreadFacade) and isinstance(store.catalog, ThreadFacade)
        assert store.limiter is not store.catalog.limiter
        rec = await store.save(1, {"w": np.arange(4, dtype=np.float32)})
        assert (await store.latest()) == rec
        assert (await store.catalog.latest_checkpoint()) == rec
        ckpt = await store.load(max_decoded_size=None)
        np.testing.assert_array_equal(ckpt.arrays["w"], np.arange(4, dtype=np.float32))


async def test_errors_and_keyword_arguments_pass_through(tmp_path: Path) -> None:
    from fedstore.errors import RoundConflictError

    async with await AsyncLocalStore.open(tmp_path) as store:
        await store.save(1, {"w": np.zeros(2, np.float32)})
        with pytest.raises(RoundConflictError):
            await store.save(1, {"w": np.ones(2, np.float32)})
        rec = await store.save(1, {"w": np.ones(2, np.float32)}, replace=True)
        assert (await store.get(1)) == rec
