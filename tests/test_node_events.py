"""Node events as dataclasses, their ``KEY=value`` status lines, and the way back."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedstore.node import events as ev
from fedstore.node.driver import StatusLine
from fedstore.node.status import EVENT_KEYS, parse_status, status_line

PEER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
CID0 = "QmRWNxnWEa4VXG2mC8KNpWB3HDnYkUpG7Yzv9rBsz4XYkN"
CID1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
DIGEST = "0123456789abcdef"

#: One example of every event kind, with values as real nodes produce them.
EXAMPLES: list[ev.NodeEvent] = [
    ev.NodeStarted(PEER),
    ev.Listening(f"/ip4/127.0.0.1/tcp/40121/p2p/{PEER}"),
    ev.Resumed(3),
    ev.PeerConnected(PEER),
    ev.PeerDisconnected(PEER),
    ev.TopicJoined("model-cids"),
    ev.TopicLeft("fed-learn"),
    ev.Published("fed-learn", 12, DIGEST),
    ev.Published("fed-learn", 5_000_000, DIGEST, CID1),
    ev.Received("fed-learn", PEER, 12, DIGEST),
    ev.Dropped("model-cids", "rate_limited", PEER),
    ev.Saved(1, CID0),
    ev.Announced(1, CID0),
    ev.Heard(2, CID1, PEER),
    ev.HeadReceived(5, CID0, PEER),
    ev.Synced(5, CID0),
    ev.SyncFailed(2, f"round 7 {CID0}: no backend has it"),
    ev.AutoSyncFailed("catalog is locked"),
    ev.BootstrapFailed(f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}", "connecting timed out after 10 s"),
]

#: The exact lines docs/NODE.md documents for some of them.
DOCUMENTED = {
    ev.Saved(1, CID0): f"SAVED=1:{CID0}",
    ev.Heard(2, CID1, PEER): f"HEARD=2:{CID1}:{PEER}",
    ev.Published("fed-learn", 12, DIGEST): f"PUBLISHED=fed-learn:12:{DIGEST}",
    ev.Published("fed-learn", 5_000_000, DIGEST, CID1): (
        f"PUBLISHED=fed-learn:5000000:{DIGEST}:{CID1}"
    ),
    ev.Received("fed-learn", PEER, 12, DIGEST): f"RECEIVED=fed-learn:{PEER}:12:{DIGEST}",
    ev.Dropped("model-cids", "rate_limited", PEER): f"DROPPED=model-cids:rate_limited:{PEER}",
    ev.HeadReceived(5, CID0, PEER): f"HEAD=5:{CID0}:{PEER}",
    ev.Resumed(3): "RESUMED=3",
    ev.SyncFailed(2, "x"): "ERROR=sync: 2 candidate(s) failed: x",
    ev.AutoSyncFailed("boom"): "ERROR=auto-sync: boom",
    ev.BootstrapFailed(
        "/ip4/1.2.3.4/tcp/1/p2p/X", "gone"
    ): "ERROR=bootstrap /ip4/1.2.3.4/tcp/1/p2p/X: gone",
}


def line(event: ev.NodeEvent) -> str:
    key, value = status_line(event)
    return f"{key}={value}"


def test_examples_cover_every_event_kind() -> None:
    kinds = set(typing.get_args(ev.NodeEvent))
    assert {type(e) for e in EXAMPLES} == kinds
    assert set(ev.__all__) >= {k.__name__ for k in kinds}
    for kind in kinds:  # frozen dataclasses with typed fields
        assert dataclasses.is_dataclass(kind)
        params = kind.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_its_status_line(event: ev.NodeEvent) -> None:
    key, value = status_line(event)
    assert key in EVENT_KEYS and "\n" not in value
    assert parse_status(key, value) == event
    assert StatusLine(0.0, key, value).event() == event


def test_documented_lines_are_exact() -> None:
    for event, text in DOCUMENTED.items():
        assert line(event) == text


def test_events_are_typed_data_not_text() -> None:
    heard = parse_status("HEARD", f"12:{CID0}:{PEER}")
    assert isinstance(heard, ev.Heard) and heard.round == 12 and isinstance(heard.round, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        heard.round = 13  # type: ignore[misc]


def test_newlines_in_free_text_never_split_a_line() -> None:
    key, value = status_line(ev.AutoSyncFailed("first\nsecond\r\nthird"))
    assert (key, value) == ("ERROR", "auto-sync: first second  third")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("OK", "checkpoint_save"),
        ("FAILED", "bogus"),
        ("READY", PEER),
        ("PEERS", "2"),
        ("SYNCED", "none"),
        ("HEAD", "none"),
        ("ERROR", "checkpoint_load: no checkpoint for round 99"),
        ("ERROR", "unknown command 'bogus'; type 'help' for the list"),
    ],
)
def test_command_output_is_not_a_node_event(key: str, value: str) -> None:
    assert parse_status(key, value) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("RESUMED", "three"), ("HEARD", f"1:{CID0}"), ("RECEIVED", "t:p:nan:x"), ("SAVED", "x")],
)
def test_malformed_event_lines_raise(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="malformed status line"):
        parse_status(key, value)


topics = st.text(
    st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
)  # check_topic: printable, no spaces; ':' allowed


@given(topic=topics, size=st.integers(0, 1 << 40), by_reference=st.booleans())
def test_topics_with_colons_still_parse(topic: str, size: int, by_reference: bool) -> None:
    events: list[ev.NodeEvent] = [
        ev.Published(topic, size, DIGEST, CID1 if by_reference else None),
        ev.Received(topic, PEER, size, DIGEST),
        ev.Dropped(topic, "malformed", PEER),
        ev.TopicJoined(topic),
    ]
    for event in events:
        assert parse_status(*status_line(event)) == event


def test_node_doc_documents_every_event_key() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "NODE.md").read_text()
    table = doc[doc.index("## Status lines") :]
    documented = set(re.findall(r"^\| `([A-Z_]+)`", table, re.MULTILINE))
    documented |= {"DISCONNECTED", "LEFT"}  # share a row with CONNECTED / JOINED
    assert documented >= EVENT_KEYS


@pytest.mark.slow
@pytest.mark.multiprocess
def test_driver_reads_a_real_nodes_lines_back_as_events(tmp_path: Path) -> None:
    from fedstore.node.driver import NodeProcess, python_env

    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "fs")
    with NodeProcess("solo", ["--dir", str(tmp_path / "n")], env) as node:
        started = node.wait_event(ev.NodeStarted)
        listening = node.wait_event(ev.Listening)
        assert listening.addr.endswith(f"/p2p/{started.peer_id}")
        mark = node.mark()
        node.run("checkpoint_save 2")
        saved = node.wait_event(ev.Saved, lambda e: e.round == 2, since=mark)
        assert node.events(ev.Announced, since=mark) == [ev.Announced(2, saved.cid)]
        assert node.events(ev.TopicJoined) == [ev.TopicJoined("model-cids")]
