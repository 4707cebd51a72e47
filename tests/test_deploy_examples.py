"""examples/deploy/ read as text: the systemd unit, the Dockerfile and the compose file.

Docker and systemd are not available here, so these tests check what can be
checked without them: the files parse, every ``fedstore`` command line in
them is accepted by fedstore's own parser, the compose topology is one
aggregator and two trainers with separate volumes and bitswap between them,
and every setting named exists. The same topology runs for real in network
namespaces: tests/test_netns_federation.py.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from fedstore.cli import build_parser
from fedstore.config import settings_catalog

yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose file")

DEPLOY = Path(__file__).resolve().parents[1] / "examples" / "deploy"


def _parses(argv: list[str]) -> Any:
    """fedstore's parser accepts *argv* (a SystemExit would mean a bad flag)."""
    return build_parser().parse_args(argv)


def test_compose_is_one_aggregator_and_two_trainers_on_their_own_volumes() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"aggregator", "trainer1", "trainer2"}
    data = {}
    for name, svc in services.items():
        assert svc["environment"]["FEDSTORE_BACKENDS"] == "bitswap", name  # peers only
        mounts = dict(reversed(v.split(":", 1)) for v in svc["volumes"])
        data[name] = next(src for dst, src in mounts.items() if dst == "/data")
        assert svc["build"]["dockerfile"] == "examples/deploy/Dockerfile"
    assert len(set(data.values())) == 3  # separate volumes
    assert set(data.values()) <= set(doc["volumes"])

    agg = _parses(services["aggregator"]["command"])
    assert (agg.command, agg.role, agg.dir) == ("daemon", "bootstrap", "/data")
    assert agg.listen == ["/ip4/0.0.0.0/tcp/4001"]
    assert agg.announce == ["/dns4/aggregator/tcp/4001"]
    assert agg.address_file == "/addresses/aggregator"

    for name in ("trainer1", "trainer2"):
        script = services[name]["command"][0]
        assert "/addresses/aggregator" in script
        line = script[script.index("exec fedstore ") + len("exec fedstore ") :]
        argv = shlex.split(line.replace("$$(head -n1 /addresses/aggregator)", "ADDR"))
        trainer = _parses(argv)
        assert (trainer.command, trainer.dir, trainer.bootstrap) == ("daemon", "/data", ["ADDR"])
        assert "addresses:/addresses:ro" in services[name]["volumes"]


def _dockerfile() -> dict[str, list[str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_runs_the_daemon_as_a_user_with_a_data_volume() -> None:
    d = _dockerfile()
    entry = json.loads(d["ENTRYPOINT"][0])
    cmd = json.loads(d["CMD"][0])
    assert entry == ["fedstore"]
    assert _parses(cmd).command == "daemon"
    assert d["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(d["VOLUME"][0]) == ["/data"]
    assert d["USER"] == ["fedstore"]
    health = d["HEALTHCHECK"][0]
    health_cmd = json.loads(health[health.index("CMD") + 3 :].strip())
    assert health_cmd[0] == "fedstore"
    ctl = _parses(health_cmd[1:])
    assert (ctl.command, ctl.ctl_command, ctl.dir) == ("ctl", "status", "/data")
    env = " ".join(d["ENV"])
    assert "FEDSTORE_DIR=/data" in env and "FEDSTORE_LISTEN=/ip4/0.0.0.0/tcp/4001" in env


def test_systemd_unit_runs_fedstore_daemon_and_stops_it_with_sigterm() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string((DEPLOY / "fedstore.service").read_text())
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0].endswith("/fedstore") and exec_start[1] == "daemon"
    args = _parses(exec_start[1:])
    assert args.dir == "/var/lib/fedstore"
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] == "fedstore" and service["StateDirectory"] == "fedstore"
    assert service["ReadWritePaths"] == args.dir
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_every_setting_the_examples_name_exists() -> None:
    catalog = settings_catalog()
    known = set(catalog.known_names())
    texts = [p.read_text() for p in DEPLOY.iterdir() if p.is_file()]
    named = {n for t in texts for n in re.findall(r"\b((?:FEDSTORE|PINATA)_[A-Z_]+)\b", t)}
    assert named and named <= known, named - known
