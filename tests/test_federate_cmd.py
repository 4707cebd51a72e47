"""``fedstore aggregate | train | simulate`` with the numpy example app, end to end.

Real processes on 127.0.0.1 with the filesystem backend: the example runs
under ``simulate``; ``aggregate`` and ``train`` run it from ``[federation]``
settings; errors and Ctrl-C end in one line.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from _json_lines import JsonLinesProcess

from fedstore.cli import main
from fedstore.cli.federate_cmd import _check_announce_port, announce_flags
from fedstore.errors import ConfigError
from fedstore.format.weight_files import load_weights_file
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.driver import python_env

REPO = Path(__file__).resolve().parents[1]
NUMPY_APP = f"{REPO}/examples/numpy_linear/app.py:app"
TIMEOUT = 120.0


def fedstore(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "fedstore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env or python_env({"COLUMNS": "200"}),
        check=False,
    )


def Proc(  # noqa: N802 - reads as the process it starts
    name: str, args: list[str], *, cwd: Path, env: dict[str, str]
) -> JsonLinesProcess:
    """A ``fedstore`` process; its stdout lines are collected (JSON ones parsed)."""
    return JsonLinesProcess(
        name, [sys.executable, "-m", "fedstore", *args], env=env, cwd=cwd, timeout=TIMEOUT
    )


# -- simulate -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_simulate_runs_the_numpy_example(tmp_path: Path) -> None:
    out = tmp_path / "report"
    export = tmp_path / "final.fsck"
    proc = fedstore(
        "simulate", "--app", NUMPY_APP, "--trainers", "2", "--rounds", "2", "--plain",
        "--out", str(out), "--export", str(export), "--timeout", "150",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fedstore simulate: app numpy_linear:app, 2 trainers" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["command"], summary["app"], summary["status"]) == (
        "simulate",
        "numpy_linear:app",
        "complete",
    )
    rounds = summary["rounds"]
    assert [(r["round"], r["participants"]) for r in rounds] == [(1, 2), (2, 2)]
    # the model learns: R² up, error down, on the aggregator's held-out data
    assert rounds[1]["metrics"]["r2"] > rounds[0]["metrics"]["r2"] > 0.5
    assert rounds[1]["metrics"]["mse"] < rounds[0]["metrics"]["mse"]
    assert summary["metric"] == "mse" and summary["final_accuracy"] is None
    final = summary["final_cid"]
    assert summary["peer_final_cids"] == {
        n: final for n in ("aggregator", "trainer-1", "trainer-2")
    }
    assert [r["trainer_metrics"].keys() == {"train_mse"} for r in rounds] == [True, True]
    assert "final_r2_at_least_0.98" in summary["targets"]
    # the exported model is the final checkpoint itself: same bytes, same CID
    assert cid_of_bytes(export.read_bytes()) == final
    assert set(load_weights_file(export)) == {"weight", "bias"}
    assert (
        "| round | participants | mse | r2 | trainers: train_mse |"
        in (out / "summary.md").read_text()
    )


# -- aggregate and train ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_aggregate_and_train_from_federation_settings(tmp_path: Path) -> None:
    (tmp_path / "fedstore.toml").write_text(
        f'[federation]\napp = "{NUMPY_APP}"\nrounds = 2\nquorum = 2\ntrainers = 2\n'
        "roundz = 3\n"  # a typo: reported, not ignored
        '[fedstore]\nbackends = ["filesystem"]\n'
    )
    env = python_env({"COLUMNS": "200"}, root=tmp_path / "objects")
    procs: list[Proc] = []
    try:
        agg = Proc(
            "aggregator",
            ["aggregate", "--log-json", "--dir", "agg", "--export", "final.safetensors"],
            cwd=tmp_path,
            env=env,
        )
        procs.append(agg)
        addr = agg.wait(lambda e: e.get("event") == "ready")["addr"]
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in addr
        t1 = Proc(
            "trainer-1",
            ["train", "--bootstrap", addr, "--dir", "t1", "--trainer-index", "1", "--plain"],
            cwd=tmp_path,
            env=env,
        )
        t2 = Proc(
            "trainer-2",
            ["--log-json", "train", "--bootstrap", addr, "--dir", "t2", "--trainer-index", "2"],
            cwd=tmp_path,
            env=env,
        )
        procs += [t1, t2]
        assert [p.finish() for p in procs] == [0, 0, 0], [p.stderr for p in procs]
        done = agg.wait(lambda e: e.get("event") == "done")
        assert done["status"] == "complete" and done["final_round"] == 2
        final = done["final_cid"]
        assert done["local_head"] == [2, final]
        closed = [e for e in agg.events if e["event"] == "round_closed"]
        assert [(e["round"], len(e["participants"])) for e in closed] == [(1, 2), (2, 2)]
        assert set(closed[-1]["metrics"]) == {"mse", "r2"}
        assert agg.wait(lambda e: e.get("event") == "exported")["parameters"] == 9
        t2_done = t2.wait(lambda e: e.get("event") == "done")
        assert (t2_done["final_cid"], t2_done["rounds_trained"]) == (final, [1, 2])
        # a person reads the other trainer's lines
        text = "\n".join(t1.lines)
        assert "fedstore train: app numpy_linear:app, trainer 1 of 2" in text
        assert "round 1: trained on 400 samples, train_mse" in text
        assert f"federation complete: round 2, final model {final}" in text
        # the unknown key was reported; the aggregator shared its address
        assert "unknown key 'roundz' in [federation]; closest known: rounds" in agg.stderr
    finally:
        for p in procs:
            p.close()
    # rounds, participants and metrics in the aggregator's catalog
    with sqlite3.connect(tmp_path / "agg" / "catalog.sqlite") as db:
        rows = db.execute(
            "SELECT round, source, name, participants FROM round_metrics "
            "ORDER BY round, source, name"
        ).fetchall()
    assert rows == [
        (r, src, name, 2)
        for r in (1, 2)
        for src, name in (("evaluate", "mse"), ("evaluate", "r2"), ("trainers", "train_mse"))
    ]
    # the export is a plain safetensors file (PyTorch loads it with safetensors.torch)
    arrays = safetensors.numpy.load_file(str(tmp_path / "final.safetensors"))
    assert arrays["weight"].shape == (8,) and arrays["weight"].dtype == np.float32
    # config show says where each federation setting came from
    shown = fedstore("config", "show", "--json", cwd=tmp_path)
    rows_by_name = {r["name"]: r for r in json.loads(shown.stdout)}
    assert rows_by_name["FEDSTORE_ROUNDS"]["value"] == "2"
    assert rows_by_name["FEDSTORE_ROUNDS"]["detail"].endswith("fedstore.toml: [federation] rounds")
    assert rows_by_name["FEDSTORE_APP"]["value"] == NUMPY_APP


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ctrl_c_stops_the_aggregator_quietly(tmp_path: Path) -> None:
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "objects")
    agg = Proc("aggregator", ["aggregate", "--app", NUMPY_APP, "--log-json"], cwd=tmp_path, env=env)
    try:
        agg.wait(lambda e: e.get("event") == "ready")
        agg.proc.send_signal(signal.SIGINT)
        assert agg.finish(timeout=30) == 130
        # JSON log records (--log-json: the open-federation notice) aside, one line
        lines = [ln for ln in agg.stderr.splitlines() if not ln.startswith("{")]
        assert lines == ["fedstore: interrupted"], agg.stderr
    finally:
        agg.close()


BAD_TRAIN = """
import numpy as np
from fedstore.app import App

def train(arrays, round, config):
    raise ValueError(f"no data for round {round}")

app = App(initial={"w": np.zeros(2, np.float32)}, train=train, rounds=1, round_timeout=60)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_an_error_in_the_apps_train_ends_the_trainer_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad_train.py").write_text(BAD_TRAIN)
    env = python_env({"FEDSTORE_BACKENDS": "filesystem"}, root=tmp_path / "objects")
    agg = Proc(
        "aggregator",
        ["aggregate", "--app", "bad_train.py", "--log-json", "--dir", "agg"],
        cwd=tmp_path,
        env=env,
    )
    try:
        addr = agg.wait(lambda e: e.get("event") == "ready")["addr"]
        tr = fedstore(
            "train", "--app", "bad_train:app", "--bootstrap", addr, "--dir", "t1", "--plain",
            cwd=tmp_path, env=env, timeout=TIMEOUT,
        )  # fmt: skip
        assert tr.returncode == 1, tr.stdout + tr.stderr
        # log records (the open-federation notice) aside, the error is one line
        errors = [ln for ln in tr.stderr.splitlines() if " WARNING " not in ln]
        assert errors == [
            "fedstore: error: app bad_train:app: train in round 1 failed: "
            "ValueError: no data for round 1 (at bad_train.py:6)"
        ], tr.stderr
        assert "Traceback" not in tr.stderr
    finally:
        agg.close()


OWN_STRATEGY = """
import numpy as np
from fedstore.app import App
from fedstore.federation.strategies import FedAvg

class HalfStep(FedAvg):
    \"\"\"FedAvg under a name of its own, registered nowhere: the app hands over the instance.\"\"\"
    name = "half-step"

def train(arrays, round, config):
    return {"w": arrays["w"] + np.float32(2.0)}, 3, {}

def evaluate(arrays):
    return {"w_mean": float(arrays["w"].mean())}

app = App(initial={"w": np.zeros(4, np.float32)}, train=train, evaluate=evaluate,
          strategy=HalfStep(), rounds=2)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_simulate_uses_the_apps_own_strategy_instance(tmp_path: Path) -> None:
    (tmp_path / "own_strategy.py").write_text(OWN_STRATEGY)
    out = tmp_path / "report"
    proc = fedstore(
        "simulate", "--app", "own_strategy.py", "--trainers", "1", "--plain", "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rounds, half-step, float32 updates" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "half-step"
    assert [r["metrics"]["w_mean"] for r in summary["rounds"]] == [2.0, 4.0]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["aggregate"], "fedstore: error: no app: give --app MODULE:OBJ"),
        (["aggregate", "--app", "no_such_app_module"], "no module named 'no_such_app_module'"),
        (["train", "--app", NUMPY_APP], "a trainer needs the aggregator's address: --bootstrap"),
        (["simulate"], "fedstore: error: no app: give --app MODULE:OBJ"),
        (
            ["simulate", "--app", NUMPY_APP, "--late-trainer", "2", "--late-round", "9"],
            "--late-round 9 is after the last round 5",
        ),
        (["simulate", "--app", NUMPY_APP, "--strategy", "nope"], "unknown strategy 'nope'"),
        (["aggregate", "--app", NUMPY_APP, "--quorum", "x"], "bad quorum 'x'"),
        (["aggregate", "--app", NUMPY_APP, "--rounds", "0"], "FEDSTORE_ROUNDS='0' must be"),
        (["aggregate", "--app", NUMPY_APP, "--announce", "/dns4/x"], "expected /ip4/IP"),
        (
            ["aggregate", "--app", "fedstore.demos.digits:app", "--app-config", "seed=1"],
            "is an App, so it takes no config (seed)",
        ),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FEDSTORE_")]:
        monkeypatch.delenv(name)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fedstore: error: "), err
    assert message in err


def test_announce_stands_for_an_advertised_ip() -> None:
    assert announce_flags(None) == {}
    assert announce_flags("/ip4/203.0.113.7") == {
        "FEDSTORE_IS_CLOUD": "true",
        "FEDSTORE_IP": "203.0.113.7",
    }
    assert announce_flags("/ip6/2001:db8::1/tcp/4001")["FEDSTORE_IP"] == "2001:db8::1"
    for bad in ("/ip4/999.1.1.1", "/ip4/1.2.3.4/udp/4001", "1.2.3.4", "/ip4/1.2.3.4/tcp/x"):
        with pytest.raises(ConfigError):
            announce_flags(bad)
    _check_announce_port("/ip4/1.2.3.4/tcp/4001", ("/ip4/0.0.0.0/tcp/4001",))
    with pytest.raises(ConfigError, match="port 4001 is not the port listened on"):
        _check_announce_port("/ip4/1.2.3.4/tcp/4001", ("/ip4/0.0.0.0/tcp/0",))
