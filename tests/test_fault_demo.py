"""``fedstore simulate --fault`` / ``fedstore demo --fault``: each fault kind end to end.

Every run is the real CLI: members (aggregator and trainer processes with a
signed manifest) and, for ``intruder``, a node outside the manifest, all on
127.0.0.1 with their own data directories; the assertions read the run's
``summary.json``. Small models and few rounds keep each run well under two
minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedstore.demos.faults import CRASH, Fault, check_faults, parse_fault
from fedstore.errors import ConfigError

SMALL = [
    "--app",
    "fedstore.demos.digits:make_app",
    "--app-config",
    "hidden=8",
    "--app-config",
    "epochs=1",
]


def run_cli(tmp_path: Path, *argv: str, timeout: float = 170) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "fedstore", *argv, "--plain", "--out", str(out), "--timeout", "150"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, COLUMNS="200"),
        cwd=tmp_path,
        check=False,
    )
    text = proc.stdout[-4000:] + proc.stderr[-3000:]
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    return proc.returncode, summary, text


def assert_taken_over(crash: dict[str, Any]) -> None:
    """A standby took the crashed round over and every live member adopted it; the time that
    took is printed against the demo's target (under one round deadline) and bounded only by
    a stall guard: a standby acts at the deadline plus a grace, so a round's worth of delay
    beyond the deadline means something hung."""
    deadline, took = crash["round_deadline_seconds"], crash["takeover_seconds"]
    print(f"takeover: every live member held the round {took} s after the kill "
          f"(target < {deadline} s)")  # fmt: skip
    assert crash["taken_over_by"] and took is not None, crash
    assert 0 < took < 2 * deadline, crash


def target(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in summary["targets"] if t["name"] == name)


# Targets judged against a clock: the demo reports them (and exits 1 on a miss), but on a
# loaded machine a miss says nothing about the protocol, so the tests assert what the
# protocol guarantees (see assert_taken_over) and print the figure instead.
TIMED = {CRASH}


def assert_survived(rc: int, summary: dict[str, Any], text: str, rounds: int) -> None:
    missed = [t for t in summary.get("targets", []) if not t["ok"]]
    assert summary, text
    assert rc == (1 if missed else 0), text
    assert all(t["name"] in TIMED for t in missed), summary["targets"]
    assert [r["round"] for r in summary["rounds"]] == list(range(1, rounds + 1))
    live = [
        n
        for n, m in summary["members"].items()
        if m["member"] and not m["killed"] and not m["hostile"]
    ]
    final = summary["final"]["cid"]
    assert final and sorted(summary["final"]["members_on_it"]) == sorted(live)
    for name in live:
        m = summary["members"][name]
        assert (m["status"], m["final_round"], m["local_head"]) == ("complete", rounds, final)
    assert (tmp_manifest := Path(summary["federation"]["manifest"])).exists(), tmp_manifest


# -- parsing (in-process) --------------------------------------------------------------------


def test_fault_values_parse_or_fail_in_one_line() -> None:
    assert parse_fault("aggregator-crash@4") == Fault("aggregator-crash", 4)
    assert parse_fault("intruder") == Fault("intruder")
    assert parse_fault("poison:1") == Fault("poison", 1)
    assert parse_fault("lying-aggregator@3").text == "lying-aggregator@3"
    for bad, says in [
        ("crash@4", "unknown fault 'crash'"),
        ("aggregator-crash", "give aggregator-crash@N"),
        ("aggregator-crash:4", "give aggregator-crash@N"),
        ("poison:0", "give poison:N"),
        ("poison@1", "give poison:N"),
        ("intruder@2", "takes no argument"),
        ("", "expected aggregator-crash@R"),
    ]:
        with pytest.raises(ConfigError, match=says) as err:
            parse_fault(bad)
        assert "\n" not in str(err.value)
    size = {"rounds": 5, "trainers": 3, "aggregators": 3}
    with pytest.raises(ConfigError, match="the run has 5 round"):
        check_faults([parse_fault("aggregator-crash@6")], **size)
    with pytest.raises(ConfigError, match="there are 3 trainer"):
        check_faults([parse_fault("poison:4")], **size)
    with pytest.raises(ConfigError, match="at least 3 aggregator-capable"):
        check_faults([parse_fault("aggregator-crash@2")], rounds=5, trainers=3, aggregators=2)
    with pytest.raises(ConfigError, match="twice"):
        check_faults([parse_fault("intruder"), parse_fault("intruder")], **size)
    with pytest.raises(ConfigError, match="same round"):
        check_faults([parse_fault("aggregator-crash@2"), parse_fault("lying-aggregator@2")], **size)


@pytest.mark.multiprocess
def test_bad_fault_is_a_one_line_error(tmp_path: Path) -> None:
    rc, summary, text = run_cli(tmp_path, "simulate", *SMALL, "--fault", "poison:9", timeout=60)
    assert rc != 0 and not summary
    errors = [line for line in text.splitlines() if "error" in line]
    assert errors == ["fedstore: error: --fault poison:9: there are 2 trainer(s)"], text


# -- the four faults over real processes -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_aggregator_crash_is_taken_over_within_a_round_deadline(tmp_path: Path) -> None:
    rc, summary, text = run_cli(
        tmp_path,
        "simulate",
        *SMALL,
        "--rounds",
        "5",
        "--trainers",
        "3",
        "--round-timeout",
        "10",
        "--fault",
        "aggregator-crash@4",
    )
    assert_survived(rc, summary, text, 5)
    crash = summary["crash"]
    victim = crash["killed"]
    assert summary["members"][victim]["killed"] and summary["members"][victim]["returncode"] == -9
    assert victim not in crash["aggregated_by"] and crash["round_deadline_seconds"] == 10
    assert_taken_over(crash)
    round4 = summary["rounds"][3]
    assert round4["takeover"] and round4["aggregator"] != victim, (round4, summary["takeovers"])
    assert [t["round"] for t in summary["takeovers"] if t["replaced"] == victim] == [4] * len(
        crash["taken_over_by"]
    )
    # the standby aggregated the very updates the victim would have: the clean run's weights
    assert summary["clean_run"]["same_weights"] is True
    assert summary["gap_to_clean"] == 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_intruder_updates_are_never_aggregated(tmp_path: Path) -> None:
    rc, summary, text = run_cli(
        tmp_path,
        "simulate",
        *SMALL,
        "--rounds",
        "3",
        "--trainers",
        "3",
        "--aggregators",
        "2",
        "--round-timeout",
        "10",
        "--fault",
        "intruder",
    )
    assert_survived(rc, summary, text, 3)
    intruder = summary["intruder"]
    assert intruder["updates_sent"] >= 3 and intruder["announcements_sent"] >= 3
    assert intruder["updates_aggregated"] == 0
    assert all(
        "intruder" not in r["participants"] and len(r["participants"]) == 3
        for r in summary["rounds"]
    )
    assert not summary["members"]["intruder"]["member"]
    # dropped in the members' pubsub validators, before anything was decoded
    assert summary["dropped_messages"].get("fed-learn:non_member", 0) >= intruder["updates_sent"]
    assert summary["dropped_messages"].get("model-cids:non_member", 0) >= 1
    assert summary["clean_run"]["same_weights"] is True


@pytest.mark.slow
@pytest.mark.multiprocess
def test_poisoned_member_is_bounded_by_the_median(tmp_path: Path) -> None:
    rc, summary, text = run_cli(
        tmp_path,
        "simulate",
        "--app",
        "fedstore.demos.digits:make_app",
        "--app-config",
        "hidden=16",
        "--app-config",
        "epochs=2",
        "--rounds",
        "10",
        "--trainers",
        "4",
        "--aggregators",
        "1",
        "--strategy",
        "median",
        "--round-timeout",
        "10",
        "--fault",
        "poison:1",
    )
    assert_survived(rc, summary, text, 10)
    poison = summary["poison"]
    # a member: its poisoned updates were admitted every round; the median bounded them
    assert poison["trainer"] == "trainer-1" and poison["rounds_admitted"] == 10
    assert summary["clean_run"]["status"] == "complete"
    assert summary["clean_run"]["same_weights"] is False
    assert 0 <= summary["gap_to_clean"] <= 0.03
    assert summary["final"]["value"] > 0.85


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lying_aggregator_is_refused_and_the_round_redone(tmp_path: Path) -> None:
    # `fedstore demo` (the digits app with the demo's defaults) takes --fault too
    rc, summary, text = run_cli(
        tmp_path,
        "demo",
        "--rounds",
        "4",
        "--trainers",
        "3",
        "--round-timeout",
        "10",
        "--fault",
        "lying-aggregator@3",
    )
    assert_survived(rc, summary, text, 4)
    lie = summary["lie"]
    assert lie["adopted_by"] == []
    honest = [n for n, m in summary["members"].items() if m["member"] and n != lie["liar"]]
    assert set(lie["refused_by"]) <= set(honest) and len(lie["refused_by"]) >= len(honest) - 1
    # redone by another aggregator, as exactly the model every refusing member recomputed
    assert lie["redone_by"] not in (None, lie["liar"])
    assert lie["expected"] == [lie["redone_cid"]]
    refused = summary["refused_models"]
    assert [(r["round"], r["cid"], r["aggregator"]) for r in refused] == [
        (3, lie["cid"], lie["liar"])
    ]
    assert summary["rounds"][2]["cid"] == lie["redone_cid"] != lie["cid"]
    assert summary["clean_run"]["same_weights"] is True


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.multiprocess
def test_aggregator_crash_across_namespace_hosts_with_separate_disks(tmp_path: Path) -> None:
    """The same crash with every process on its own network-namespace host and filesystem root:
    models and updates travel over bitswap between hosts, nothing is shared on disk."""
    from fedstore.netns import unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(why)
    rc, summary, text = run_cli(
        tmp_path, "simulate", *SMALL, "--rounds", "5", "--trainers", "3",
        "--round-timeout", "10", "--fault", "aggregator-crash@4", "--netns",
    )  # fmt: skip
    assert_survived(rc, summary, text, 5)
    hosts = {m["addr"].split("/")[2] for m in summary["members"].values()}
    assert len(hosts) == 6 and "127.0.0.1" not in hosts
    crash = summary["crash"]
    assert_taken_over(crash)
    assert summary["rounds"][3]["takeover"], (summary["rounds"][3], summary["takeovers"], crash)
    assert summary["clean_run"]["same_weights"] is True
