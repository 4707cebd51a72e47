"""Sync candidate ranking and the Syncer's fallback, with fakes (no network)."""

from __future__ import annotations

from fedstore.errors import IntegrityError, NotFoundError
from fedstore.p2p.sync import Candidate, Claim, Head, Syncer, rank_candidates


def test_rank_highest_round_then_most_vouched() -> None:
    claims = [
        (3, "QmA", "p1"),
        (5, "QmB", "p1"),
        (5, "QmC", "p2"),
        (5, "QmC", "p3"),
        (5, "QmC", "p3"),  # the same peer twice counts once
        (4, "QmD", "p1"),
    ]
    ranked = rank_candidates(claims, above=3)
    assert ranked == [
        Candidate(5, "QmC", frozenset({"p2", "p3"})),
        Candidate(5, "QmB", frozenset({"p1"})),
        Candidate(4, "QmD", frozenset({"p1"})),
    ]
    assert rank_candidates(claims, above=5) == []
    assert [c.round for c in rank_candidates(claims, above=None)] == [5, 5, 4, 3]


class FakeNet:
    def __init__(
        self,
        local: Head | None,
        peers: list[Claim],
        known: list[Claim],
        objects: dict[str, bytes | Exception],
    ) -> None:
        self.local, self.peers, self.known, self.objects = local, peers, known, objects
        self.fetched: list[str] = []
        self.stored: list[tuple[int, str]] = []

    async def local_head(self) -> Head | None:
        return self.local

    async def ask(self) -> list[Claim]:
        return self.peers

    async def known_claims(self) -> list[Claim]:
        return self.known

    async def fetch(self, cid: str) -> bytes:
        self.fetched.append(cid)
        obj = self.objects[cid]
        if isinstance(obj, Exception):
            raise obj
        return obj

    async def store(self, round: int, data: bytes, cid: str) -> Head:
        self.stored.append((round, cid))
        self.local = Head(round, cid)
        return self.local

    def syncer(self) -> Syncer:
        return Syncer(
            local_head=self.local_head,
            ask_peers=self.ask,
            known_claims=self.known_claims,
            fetch=self.fetch,
            store=self.store,
        )


async def test_sync_fetches_best_and_falls_back() -> None:
    net = FakeNet(
        Head(2, "QmOld"),
        peers=[(6, "QmBad", "p1"), (1, "QmAncient", "p2")],
        known=[(6, "QmGone", "p3"), (4, "QmGood", "p4")],
        objects={
            "QmBad": IntegrityError("corrupt"),
            "QmGone": NotFoundError("nope"),
            "QmGood": b"data",
        },
    )
    outcome = await net.syncer().sync()
    assert outcome.fetched and outcome.head == Head(4, "QmGood")
    assert len(outcome.failures) == 2
    assert sorted(net.fetched[:2]) == ["QmBad", "QmGone"] and net.fetched[2] == "QmGood"
    assert net.stored == [(4, "QmGood")]


async def test_sync_up_to_date_and_all_failing() -> None:
    net = FakeNet(Head(9, "QmMine"), peers=[(9, "QmMine", "p1")], known=[], objects={})
    outcome = await net.syncer().sync()
    assert (outcome.head, outcome.fetched, outcome.failures) == (Head(9, "QmMine"), False, ())
    net = FakeNet(
        None, peers=[(1, "QmX", "p1")], known=[], objects={"QmX": NotFoundError("nowhere")}
    )
    outcome = await net.syncer().sync()
    assert outcome.head is None and not outcome.fetched and len(outcome.failures) == 1
