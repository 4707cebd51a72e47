"""Update-norm bounding (``clip``): a strategy option, deterministic, what it buys end to end."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
from _federation import BOTH, MODEL, TRAINER, make_membership, new_signer, scaled_trainer
from _federation import shift_trainer as honest

from fedstore.federation.fake import FakeNetwork
from fedstore.federation.global_model import SETTINGS_KEY, aggregate_round, encode_global
from fedstore.federation.member import MemberOptions, take_part
from fedstore.federation.strategies import RoundContext, Update, load_strategy
from fedstore.federation.strategies.base import clip_updates
from fedstore.format import decode, encode
from fedstore.ipld.cid import cid_of_bytes

BASE = {
    "w": np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4),
    "b": np.zeros(4, np.float32),
    "steps": np.array([3, 4], np.int64),
}
SENDERS = [f"12D3KooWPeer{i}" for i in range(5)]


def updates(scale: float = 1000.0) -> list[Update]:
    rng = np.random.default_rng(3)
    out = []
    for i, s in enumerate(SENDERS):
        step = 0.05 * rng.standard_normal(36).astype(np.float32)
        if i == 4:
            step = step * np.float32(scale)  # the poisoned one
        arrays = {
            "w": BASE["w"] + step[:32].reshape(8, 4),
            "b": BASE["b"] + step[32:],
            "steps": BASE["steps"] + i,  # integer tensors are never clipped
        }
        out.append(Update(s, 10 + i, arrays))
    return out


def step_norm(u: Update) -> float:
    total = 0.0
    for n in ("b", "w"):
        d = np.asarray(u.arrays[n], np.float64) - BASE[n].astype(np.float64)
        total += float(np.sum(d * d))
    return math.sqrt(total)


def test_clip_bounds_each_step_and_leaves_short_ones_alone() -> None:
    ups = updates()
    ctx = RoundContext(1, cid_of_bytes(b"base"), BASE)
    norms = [step_norm(u) for u in ups]
    clip = 2 * max(norms[:4])
    out, n = clip_updates(ctx, ups, clip)
    assert n == 1
    for before, after in zip(ups[:4], out[:4], strict=True):
        assert after is before  # untouched, not copied
    assert step_norm(out[4]) == pytest.approx(clip, rel=1e-6)
    assert np.array_equal(out[4].arrays["steps"], ups[4].arrays["steps"])
    assert out[4].arrays["w"].dtype == np.float32
    assert clip_updates(ctx, ups, 0.0) == (ups, 0)


CHILD = r"""
import json, sys
from pathlib import Path
from fedstore.federation.global_model import aggregate_round, encode_global
from fedstore.federation.strategies import RoundContext, Update, load_strategy
from fedstore.format import decode
from fedstore.ipld.cid import cid_of_bytes

d = Path(sys.argv[1])
spec = json.loads((d / "spec.json").read_text())
base = decode((d / "base.fsck").read_bytes()).arrays
ups = [Update(s, n, decode((d / f"{s}.fsck").read_bytes()).arrays)
       for s, n in reversed(spec["updates"])]
out = {}
for name, settings in spec["strategies"].items():
    ctx = RoundContext(1, spec["base_cid"], base)
    outcome = aggregate_round(load_strategy(name, settings), ctx, ups)
    out[name] = cid_of_bytes(encode_global(outcome))
print(json.dumps(out))
"""


def test_clipping_strategies_are_recorded_and_deterministic_in_another_process(
    tmp_path: Path,
) -> None:
    ups = updates()
    base_cid = cid_of_bytes(b"base")
    strategies = {
        "fedavg": {"clip": 0.5},
        "median": {"clip": 0.5},
        "trimmed-mean": {"trim": 0.2, "clip": 0.5},
        "fedadam": {"lr": 0.3, "clip": 0.5},
    }
    mine: dict[str, str] = {}
    for name, settings in strategies.items():
        outcome = aggregate_round(
            load_strategy(name, settings), RoundContext(1, base_cid, BASE), ups
        )
        assert json.loads(outcome.metadata[SETTINGS_KEY])["clip"] == 0.5
        assert outcome.strategy_metrics["clipped"] >= 1
        mine[name] = cid_of_bytes(encode_global(outcome))
    (tmp_path / "base.fsck").write_bytes(encode(BASE))
    for u in ups:
        (tmp_path / f"{u.sender}.fsck").write_bytes(encode(u.arrays))
    spec = {
        "base_cid": base_cid,
        "updates": [[u.sender, u.num_samples] for u in ups],
        "strategies": strategies,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == mine
    # clip 0 is no clipping and leaves the recorded settings (and CIDs) as before
    assert load_strategy("fedavg", {"clip": 0}).settings() == {}


@pytest.mark.parametrize(
    ("factor", "clip"), [(1000.0, 0.0), (1000.0, 6.0), (-50.0, 0.0), (-50.0, 6.0)]
)
async def test_a_scaled_or_sign_flipped_member_is_bounded_by_clipping(
    factor: float, clip: float
) -> None:
    """Four members step +1 per weight (norm 6 over 36 weights); one sends ``factor`` times it.

    FedAvg without clipping follows the poisoned member; with ``clip`` 6 its step counts
    as at most one honest step, so the model moves by at most 2 * 6 / 5 from the honest one.
    """
    net = FakeNetwork()
    peers = [net.signing_peer() for _ in range(5)]
    roles = {p.peer_id: (BOTH if i == 0 else TRAINER) for i, p in enumerate(peers)}
    fed = make_membership(
        new_signer(),
        roles,
        rounds=1,
        quorum=5,
        round_timeout=3.0,
        strategy="fedavg",
        strategy_settings={"clip": clip} if clip else {},
    )
    opts = MemberOptions(announce_interval=0.05, linger=0.2, listen_first=0.2)
    results = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i, p in enumerate(peers):
                fn = scaled_trainer(factor) if i == 4 else honest(1.0)

                async def run(i: int = i, p: object = p, fn: object = fn) -> None:
                    results[i] = await take_part(
                        p,  # type: ignore[arg-type]
                        fed,
                        initial=MODEL if i == 0 else None,
                        train=fn,  # type: ignore[arg-type]
                        options=opts,
                    )

                nursery.start_soon(functools.partial(run))
    final = decode(net.blobs[results[0].final_cid]).arrays["w"]
    deviation = float(np.max(np.abs(final.astype(np.float64) - 1.0)))
    if clip:
        assert deviation <= 2 * clip / 5 + 1e-6
    else:
        assert deviation >= abs(factor - 1.0) / 5 - 1e-3  # the poisoned member moved it
