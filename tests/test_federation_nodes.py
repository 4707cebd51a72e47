"""A federation with a manifest over real nodes on 127.0.0.1: API, CLI, catalog records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio
from _federation import (
    BOTH,
    MODEL,
    TRAINER,
    identity_of,
    make_membership,
    new_signer,
    node_config,
)

from fedstore.catalog import Catalog
from fedstore.federation import api
from fedstore.federation.events import Event
from fedstore.federation.manifest import write_manifest_file
from fedstore.federation.member import MemberOptions
from fedstore.store import AsyncLocalStore

QUICK = MemberOptions(announce_interval=0.1, linger=0.5, listen_first=0.5)


def add_one(
    arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Mapping[str, object]
) -> tuple[dict[str, npt.NDArray[np.generic]], int, dict[str, float]]:
    return {k: v + np.float32(1.0) for k, v in arrays.items()}, 7, {"round": float(rnd)}


async def test_members_over_real_nodes_verify_and_record_every_round(tmp_path: Path) -> None:
    owner = new_signer()
    ids = {name: identity_of(tmp_path, name).peer_id for name in ("a", "b", "c")}
    membership = make_membership(
        owner,
        {ids["a"]: BOTH, ids["b"]: BOTH, ids["c"]: TRAINER},
        rounds=3,
        quorum=3,
        round_timeout=8.0,
    )
    manifest = tmp_path / "fed.json"
    write_manifest_file(manifest, membership.signed)
    events: dict[str, list[Event]] = {n: [] for n in ids}
    results: dict[str, Any] = {}
    ready = trio.Event()
    addr: list[str] = []

    def on_ready(a: str) -> None:
        addr.append(a)
        ready.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def a() -> None:
                results["a"] = await api.take_part(
                    federation=manifest,
                    initial=MODEL,
                    train=add_one,
                    node=node_config(tmp_path, "a", role="bootstrap"),
                    options=QUICK,
                    on_event=events["a"].append,
                    on_ready=on_ready,
                )

            nursery.start_soon(a)
            await ready.wait()

            async def b() -> None:
                results["b"] = await api.take_part(
                    federation=str(manifest),
                    initial=MODEL,
                    train=add_one,
                    node=node_config(tmp_path, "b", bootstrap=addr),
                    options=QUICK,
                    on_event=events["b"].append,
                )

            async def c() -> None:
                results["c"] = await api.train(
                    add_one,
                    node=node_config(tmp_path, "c", bootstrap=addr),
                    federation=membership.cid,  # by CID: fetched from a peer, then verified
                    options=QUICK,
                    on_event=events["c"].append,
                )

            nursery.start_soon(b)
            nursery.start_soon(c)

    assert {r.status for r in results.values()} == {"complete"}
    finals = {r.final_cid for r in results.values()}
    assert len(finals) == 1
    final = finals.pop()
    # every node holds the final model, bound to the manifest, and recorded each round
    for name in ids:
        store = await AsyncLocalStore.open(tmp_path / name)
        try:
            head = await store.latest()
            assert head is not None and (head.round, head.cid) == (3, final)
            meta = (await store.load(3)).metadata
        finally:
            await store.aclose()
        assert meta["fedstore.manifest"] == membership.cid
        assert np.all((await _arrays(tmp_path / name, 3))["w"] == 3.0)
        with Catalog.open(tmp_path / name) as cat:
            assert [m.cid for m in cat.list_manifests()] == [membership.cid]
            rows = cat.federation_rounds(manifest=membership.cid)
        adopted = [(r.round, r.status) for r in rows]
        assert adopted == [(i, "adopted") for i in range(4)]
        assert len({r.session for r in rows}) == 1
        # the trainer-only member recomputed every round it did not start from
        if name == "c":
            assert [r.how for r in rows[1:]] == ["full", "full", "full"]
    # the CLI reads the manifest back from a node's catalog by CID
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedstore",
            "federation",
            "show",
            membership.cid,
            "--json",
            "--dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["cid"] == membership.cid and len(shown["manifest"]["members"]) == 3


async def _arrays(data_dir: Path, round: int) -> dict[str, Any]:
    store = await AsyncLocalStore.open(data_dir)
    try:
        return dict((await store.load(round)).arrays)
    finally:
        await store.aclose()
