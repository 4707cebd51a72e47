"""Verified aggregates: a member recomputes a global model from the signed updates it lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from _federation import AGGREGATOR, MODEL, TRAINER, make_membership, new_signer

from fedstore.errors import VerificationError
from fedstore.federation.fake import FakeNetwork, FakePeer
from fedstore.federation.global_model import (
    Binding,
    UpdateRef,
    aggregate_round,
    round_zero_metadata,
)
from fedstore.federation.manifest import initial_cid
from fedstore.federation.membership import Membership
from fedstore.federation.messages import encode_tensors, update_claim
from fedstore.federation.signing import UPDATE_DOMAIN, KeySigner, encode_signature
from fedstore.federation.strategies import RoundContext, Update, load_strategy
from fedstore.federation.verify import VerifiedModel, Verifier
from fedstore.ipld.cid import cid_of_bytes

SESSION = "ab" * 16


@dataclass
class World:
    net: FakeNetwork
    agg: FakePeer
    trainers: list[KeySigner]
    outsider: KeySigner
    membership: Membership
    base: VerifiedModel

    def verifier(self, **kw: Any) -> Verifier:
        return Verifier(self.agg, self.membership, SESSION, **kw)

    async def update(
        self,
        signer: KeySigner,
        delta: float,
        *,
        samples: int = 10,
        claim_samples: int | None = None,
    ) -> tuple[Update, UpdateRef]:
        arrays = {k: (v + np.float32(delta)).astype(v.dtype) for k, v in MODEL.items()}
        payload = encode_tensors(arrays)
        payload_cid = await self.agg.put_blob(payload)
        claim = update_claim(
            self.membership.cid,
            SESSION,
            1,
            self.base.cid,
            signer.peer_id,
            samples if claim_samples is None else claim_samples,
            payload_cid,
        )
        sig = encode_signature(signer.sign(UPDATE_DOMAIN, claim))
        return (
            Update(signer.peer_id, samples, arrays),
            UpdateRef(signer.peer_id, payload_cid, samples, sig),
        )

    async def publish(
        self,
        pairs: list[tuple[Update, UpdateRef]],
        *,
        strategy: str = "fedavg",
        tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        binding: Binding | None = None,
        round: int = 1,
        base_cid: str | None = None,
    ) -> str:
        ctx = RoundContext(round, base_cid or self.base.cid, self.base.arrays)
        outcome = aggregate_round(
            load_strategy(strategy),
            ctx,
            [u for u, _ in pairs],
            binding=binding or Binding(self.membership.cid, SESSION),
            refs={r.sender: r for _, r in pairs},
        )
        assert outcome.arrays is not None
        arrays = tamper(dict(outcome.arrays)) if tamper else outcome.arrays
        return (await self.agg.save_global(round, arrays, outcome.metadata)).cid


async def world(**manifest: Any) -> World:
    net = FakeNetwork()
    agg = net.signing_peer()
    trainers = [new_signer() for _ in range(3)]
    roles = {agg.peer_id: AGGREGATOR, **{t.peer_id: TRAINER for t in trainers}}
    manifest.setdefault("quorum", 2)
    membership = make_membership(new_signer(), roles, **manifest)
    meta = round_zero_metadata(Binding(membership.cid, SESSION), {})
    zero = await agg.save_global(0, MODEL, meta)
    base = VerifiedModel(0, zero.cid, dict(MODEL), meta)
    return World(net, agg, trainers, new_signer(), membership, base)


async def test_an_honest_aggregate_verifies_to_the_same_bytes() -> None:
    w = await world()
    pairs = [await w.update(t, d) for t, d in zip(w.trainers, (1.0, 2.0, 4.0), strict=True)]
    cid = await w.publish(pairs)
    model = await w.verifier().verify(1, cid, w.base)
    assert model.cid == cid and model.how == "full" and model.data is not None
    assert model.participants == tuple(sorted(t.peer_id for t in w.trainers))
    assert np.allclose(model.arrays["w"], 7 / 3)
    # verification does not depend on having heard the updates: fetched by payload CID
    assert model.seconds > 0


async def test_a_model_that_is_not_the_aggregate_is_refused_with_both_cids() -> None:
    w = await world()
    pairs = [await w.update(t, d) for t, d in zip(w.trainers, (1.0, 2.0, 4.0), strict=True)]
    honest = await w.publish(pairs)
    lie = await w.publish(pairs, tamper=lambda a: {**a, "b": a["b"] + np.float32(1e-3)})
    with pytest.raises(VerificationError) as info:
        await w.verifier().verify(1, lie, w.base)
    assert info.value.cid == lie and info.value.expected == honest
    assert f"recomputed {honest}" in str(info.value)
    # with verification off, the binding is checked but the arithmetic is trusted
    trusted = await w.verifier(full=False).verify(1, lie, w.base)
    assert trusted.how == "binding"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outsider", "not a trainer of the federation"),
        ("aggregator-listed", "not a trainer of the federation"),
        ("bad-signature", "does not carry its signature"),
        ("below-quorum", "the quorum is 2"),
        ("other-session", "belongs to run"),
        ("other-federation", "belongs to federation"),
        ("other-strategy", "the federation's strategy is fedavg"),
        ("other-base", "builds on"),
        ("missing-payload", "cannot check model"),
    ],
)
async def test_what_a_checkpoint_claims_is_checked(case: str, message: str) -> None:
    w = await world()
    pairs = [await w.update(t, 1.0) for t in w.trainers[:2]]
    kwargs: dict[str, Any] = {}
    if case == "outsider":
        pairs.append(await w.update(w.outsider, 1000.0))
    elif case == "aggregator-listed":
        pairs.append(await w.update(w.net.signers[w.agg.peer_id], 1000.0))
    elif case == "bad-signature":  # signed for 10 samples, listed with 1000
        u, r = await w.update(w.trainers[2], 1000.0, samples=1000, claim_samples=10)
        pairs.append((u, r))
    elif case == "below-quorum":
        pairs = pairs[:1]
    elif case == "other-session":
        kwargs["binding"] = Binding(w.membership.cid, "cd" * 16)
    elif case == "other-federation":
        kwargs["binding"] = Binding(cid_of_bytes(b"another manifest", 1), SESSION)
    elif case == "other-strategy":
        kwargs["strategy"] = "median"
    elif case == "other-base":
        kwargs["base_cid"] = cid_of_bytes(b"another base")
    elif case == "missing-payload":
        del w.net.blobs[pairs[0][1].payload_cid]
    cid = await w.publish(pairs, **kwargs)
    with pytest.raises(VerificationError, match=message):
        await w.verifier().verify(1, cid, w.base)


async def test_rounds_cannot_pass_the_manifest_and_must_follow_the_base() -> None:
    w = await world(rounds=1)
    pairs = [await w.update(t, 1.0) for t in w.trainers]
    cid = await w.publish(pairs, round=2)
    with pytest.raises(VerificationError, match="past the federation's 1 rounds"):
        await w.verifier().verify(2, cid, w.base)
    with pytest.raises(VerificationError, match="says round '2'"):
        await w.verifier().verify(1, cid, w.base)


async def test_round_zero_is_checked_against_the_pin_and_an_aggregators_own_weights() -> None:
    other = {k: np.full_like(v, 5.0) for k, v in MODEL.items()}
    w = await world(initial=initial_cid(MODEL))
    assert (await w.verifier().verify_round_zero(w.base.cid)).round == 0
    meta = round_zero_metadata(Binding(w.membership.cid, SESSION), {})
    bogus = (await w.agg.save_global(0, other, meta)).cid
    with pytest.raises(VerificationError, match="initial weights the manifest pins"):
        await w.verifier().verify_round_zero(bogus)
    unpinned = await world()
    bogus = (
        await unpinned.agg.save_global(
            0, other, round_zero_metadata(Binding(unpinned.membership.cid, SESSION), {})
        )
    ).cid
    assert (await unpinned.verifier().verify_round_zero(bogus)).round == 0  # trust on first use
    with pytest.raises(VerificationError, match="own initial model"):
        await unpinned.verifier(expect_initial=MODEL).verify_round_zero(bogus)


async def test_a_late_member_verifies_the_chain_back_to_round_zero() -> None:
    w = await world()
    pairs = [await w.update(t, 1.0) for t in w.trainers]
    one = await w.publish(pairs)
    verifier = w.verifier()
    first = await verifier.verify(1, one, w.base)
    # round 2 builds on round 1: sign updates against it
    w2 = replace(w, base=first)
    pairs2 = []
    for t in w.trainers:
        u, _ = await w2.update(t, 2.0)
        payload = encode_tensors(dict(u.arrays))
        pcid = await w.agg.put_blob(payload)
        claim = update_claim(w.membership.cid, SESSION, 2, one, t.peer_id, 10, pcid)
        pairs2.append(
            (u, UpdateRef(t.peer_id, pcid, 10, encode_signature(t.sign(UPDATE_DOMAIN, claim))))
        )
    two = await w2.publish(pairs2, round=2)
    trusted: Mapping[tuple[int, str], VerifiedModel] = {}
    chain = await w.verifier().verify_chain(2, two, lambda r, c: trusted.get((r, c)))
    assert [(m.round, m.cid) for m in chain] == [(0, w.base.cid), (1, one), (2, two)]
    # from a member that trusts round 1 already, only round 2 is verified
    chain = await w.verifier().verify_chain(
        2, two, lambda r, c: first if (r, c) == (1, one) else None
    )
    assert [m.round for m in chain] == [2]
