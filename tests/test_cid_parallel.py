"""Leaf hashing on worker threads gives the CIDs of the one-thread path."""

from __future__ import annotations

import numpy as np
import pytest

from fedstore.ipld import cid as cidmod
from fedstore.ipld.cid import CidBuilder, CidVerifier, DagParams


@pytest.mark.parametrize(
    "params", [DagParams.kubo(0), DagParams.kubo(1), DagParams.unixfs_v1_2025()], ids=str
)
def test_parallel_leaves_match_serial_hashing(params: DagParams) -> None:
    data = np.random.default_rng(3).bytes(11 * params.chunk_size + 12_345)
    serial = CidBuilder(params)
    for start in range(0, len(data), 100_000):  # pieces smaller than the threshold
        serial.update(data[start : start + 100_000])
    parallel = CidBuilder(params)
    parallel.update(data[:7])  # a partial chunk first, then one big update
    parallel.update(data[7:])
    assert len(data[7:]) // params.chunk_size >= cidmod._PARALLEL_LEAVES
    assert parallel.build().leaves == serial.build().leaves
    assert parallel.finalize() == serial.finalize()
    verifier = CidVerifier(serial.finalize())
    verifier.update(data)
    verifier.verify()


def test_parallel_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = CidBuilder._leaves_parallel

    def spy(self: CidBuilder, mv: memoryview) -> None:
        calls.append(len(mv))
        real(self, mv)

    monkeypatch.setattr(CidBuilder, "_leaves_parallel", spy)
    monkeypatch.setattr(cidmod, "_hash_threads", lambda: 2)
    builder = CidBuilder(0)
    builder.update(bytes(20 * 262144 + 5))
    assert calls == [20 * 262144]
