"""Sync candidate ranking and the Syncer's fallback, with fakes (no network)."""

from __future__ import annotations

from fedstore.errors import IntegrityError, NotFoundError
from fedstore.p2p.sync import (
    Candidate,
    Claim,
    Failure,
    Head,
    Syncer,
    backoff,
    rank_candidates,
)


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


# -- failed claims: remembered, demoted, backed off (issue 15 item 3) -------------------


class Memory:
    """The failure memory a node keeps in its catalog, as the syncer's callables."""

    def __init__(self, clock: list[float]) -> None:
        self.rows: dict[tuple[int, str, str], Failure] = {}
        self.clock = clock

    async def failures(self) -> list[Failure]:
        return list(self.rows.values())

    async def record(self, cand: Candidate, error: str) -> None:
        for peer in cand.peers:
            old = self.rows.get((cand.round, cand.cid, peer))
            n = 1 if old is None else old.attempts + 1
            self.rows[(cand.round, cand.cid, peer)] = Failure(
                cand.round, cand.cid, peer, n, self.clock[0]
            )

    async def clear(self, cand: Candidate) -> None:
        for key in [k for k in self.rows if k[:2] == (cand.round, cand.cid)]:
            del self.rows[key]


def remembering(net: FakeNet, memory: Memory, **kw: float) -> Syncer:
    return Syncer(
        local_head=net.local_head,
        ask_peers=net.ask,
        known_claims=net.known_claims,
        fetch=net.fetch,
        store=net.store,
        failures=memory.failures,
        record_failure=memory.record,
        clear_failure=memory.clear,
        clock=lambda: memory.clock[0],
        **kw,  # type: ignore[arg-type]
    )


BOGUS = [(10**12 - i, f"QmBogus{i}", "liar") for i in range(3)]


async def test_bogus_high_claims_cost_one_attempt_then_the_search_goes_on() -> None:
    clock = [1000.0]
    memory = Memory(clock)
    net = FakeNet(
        None,
        peers=[],
        known=[*BOGUS, (5, "QmHonest", "honest")],
        objects={"QmHonest": b"data", **{c: NotFoundError("nobody has it") for _, c, _ in BOGUS}},
    )
    syncer = remembering(net, memory)
    # the liar's three claims are spread: one costs an attempt, then the honest peer's
    outcome = await syncer.sync()
    assert outcome.fetched and outcome.head == Head(5, "QmHonest")
    assert net.fetched == ["QmBogus0", "QmHonest"]
    assert {(r, c) for r, c, _ in memory.rows} == {(10**12, "QmBogus0")}

    # a fresh claim of the liar's (now a suspect) ranks below a newer honest round
    net.known = [*BOGUS, (6, "QmHonest6", "honest"), (10**12 + 5, "QmFresh", "liar")]
    net.objects["QmHonest6"] = b"six"
    net.fetched.clear()
    outcome = await syncer.sync()
    assert outcome.head == Head(6, "QmHonest6") and net.fetched == ["QmHonest6"]
    assert outcome.skipped == 1  # QmBogus0 is in its back-off


async def test_failed_candidates_back_off_doubling_and_are_forgotten_on_success() -> None:
    clock = [0.0]
    memory = Memory(clock)
    net = FakeNet(None, peers=[], known=[(7, "QmFlaky", "p1")], objects={})
    net.objects["QmFlaky"] = NotFoundError("down")
    syncer = remembering(net, memory, retry_after=10.0, retry_cap=25.0)
    assert not (await syncer.sync()).fetched and len(net.fetched) == 1
    assert not syncer.worth_trying(7, "QmFlaky") and syncer.worth_trying(7, "QmOther")
    clock[0] = 9.0  # inside the first back-off (10 s): not even tried
    outcome = await syncer.sync()
    assert outcome.skipped == 1 and not outcome.failures and len(net.fetched) == 1
    clock[0] = 10.0
    assert not (await syncer.sync()).fetched and len(net.fetched) == 2  # second failure
    clock[0] = 29.0  # second back-off is 20 s
    assert (await syncer.sync()).skipped == 1 and len(net.fetched) == 2
    clock[0] = 30.0
    net.objects["QmFlaky"] = b"back"
    outcome = await syncer.sync()
    assert outcome.fetched and outcome.head == Head(7, "QmFlaky")
    assert memory.rows == {}  # fetched after all: forgotten
    assert backoff(1, retry_after=10, cap=25) == 10 and backoff(5, retry_after=10, cap=25) == 25


def test_rank_demotes_suspects_and_spreads_one_peers_claims() -> None:
    claims = [
        (100, "QmL1", "liar"),
        (99, "QmL2", "liar"),
        (50, "QmA", "a"),
        (40, "QmB", "b"),
        (30, "QmS", "sus"),
    ]
    failures = [Failure(7, "QmOld", "sus", 1, 0.0)]
    ranked = rank_candidates(claims, above=None, failures=failures, now=1e9)
    assert [c.cid for c in ranked] == ["QmL1", "QmA", "QmB", "QmL2", "QmS"]
    assert ranked[-1].suspect and not ranked[0].suspect
