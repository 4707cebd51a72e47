"""Checked by mypy only (pyproject ``[tool.mypy] files``), never run: the facades keep
the sync methods' exact parameter and return types. A line marked ``type: ignore[...]``
must stay an error; ``warn_unused_ignores`` is on for this module, so if the facade
stopped checking arguments the ignore would be reported as unused.
"""

from __future__ import annotations

from pathlib import Path
from typing import assert_type

import numpy as np

from fedstore.catalog import AsyncCatalog, CheckpointRecord, PinRecord
from fedstore.format import Checkpoint
from fedstore.store import AsyncLocalStore


async def catalog_twins(acat: AsyncCatalog) -> None:
    assert_type(await acat.latest_checkpoint(), CheckpointRecord | None)
    assert_type(await acat.list_rounds(status="local"), list[int])
    assert_type(await acat.pins_for("Qm"), list[PinRecord])
    assert_type(await acat.prune_announcements(10), int)
    await acat.add_checkpoint(1, "Qm", bogus=1)  # type: ignore[call-arg]
    await acat.get_checkpoint("one")  # type: ignore[arg-type]


async def store_twins(store: AsyncLocalStore) -> None:
    rec = await store.save(1, {"w": np.zeros(1)}, replace=True)
    assert_type(rec, CheckpointRecord)
    assert_type(await store.load(None, max_decoded_size=None), Checkpoint)
    assert_type(await store.path_of(1), Path)
    await store.save("one", {})  # type: ignore[arg-type]
    await store.prune()  # type: ignore[call-arg]
