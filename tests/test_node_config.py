"""Configuration precedence (flags > env > .env > fedstore.toml), parsing and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedstore.config import (
    VARIABLES,
    load_node_config,
    load_settings,
    parse_env_file,
    read_toml_settings,
)
from fedstore.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_flags_env_dotenv_toml(tmp_path: Path) -> None:
    (tmp_path / "fedstore.toml").write_text(
        'fedstore_role = "bootstrap"\nFEDSTORE_PEER_RATE = 1\nFEDSTORE_PEER_BURST = 2\n'
        "FEDSTORE_HEAD_TIMEOUT = 3\n"
        '[fedstore]\nbackends = ["kubo", "filesystem"]\n'
    )
    (tmp_path / ".env").write_text("FEDSTORE_PEER_BURST=20\nFEDSTORE_HEAD_TIMEOUT=30\n")
    environ = {"FEDSTORE_HEAD_TIMEOUT": "300", "FEDSTORE_REANNOUNCE_INTERVAL": "7"}
    cfg = load_node_config(
        {"FEDSTORE_REANNOUNCE_INTERVAL": "1.5", "CHECKPOINT_DIR": None},
        environ=environ,
        cwd=tmp_path,
    )
    assert cfg.role == "bootstrap"  # toml only
    assert cfg.peer_rate == 1.0  # toml only
    assert cfg.peer_burst == 20  # .env beats toml
    assert cfg.head_timeout == 300.0  # env beats .env
    assert cfg.reannounce_interval == 1.5  # flag beats env
    assert cfg.backends == ("kubo", "filesystem")  # table flattened, list joined
    assert cfg.data_dir == tmp_path / "checkpoints_bootstrap"  # None flag = unset


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = load_node_config(environ={}, cwd=tmp_path)
    assert cfg.role == "trainer"
    assert cfg.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert cfg.bootstrap == ()
    assert cfg.backends is None
    assert cfg.heartbeat_interval == 0.5
    assert cfg.announce_ip is None


def test_cloud_address_and_bootstrap_list(tmp_path: Path) -> None:
    cfg = load_node_config(
        environ={
            "IS_CLOUD": "yes",
            "IP": "203.0.113.9",
            "BOOTSTRAP_ADDR": "/ip4/1.2.3.4/tcp/1/p2p/A, /ip4/1.2.3.5/tcp/1/p2p/B",
        },
        cwd=tmp_path,
    )
    assert cfg.announce_ip == "203.0.113.9"
    assert cfg.bootstrap == ("/ip4/1.2.3.4/tcp/1/p2p/A", "/ip4/1.2.3.5/tcp/1/p2p/B")
    # IP without IS_CLOUD is ignored, as in the original design
    assert load_node_config(environ={"IP": "203.0.113.9"}, cwd=tmp_path).announce_ip is None
    with pytest.raises(ConfigError, match="IP is not set"):
        load_node_config(environ={"IS_CLOUD": "true"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("FEDSTORE_ROLE", "boss", "expected one of"),
        ("FEDSTORE_HEARTBEAT", "fast", "not a float"),
        ("FEDSTORE_PEER_BURST", "0", "at least"),
        ("FEDSTORE_INLINE_LIMIT", "2000000", "1 MiB"),
        ("FEDSTORE_AUTO_SYNC", "maybe", "not a boolean"),
    ],
)
def test_invalid_values_are_config_errors(
    tmp_path: Path, name: str, value: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_node_config(environ={name: value}, cwd=tmp_path)


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text(
        "# comment\n\n"
        "A=plain value # trailing comment\n"
        "export B='single # not a comment'\n"
        'C="line\\nbreak \\"q\\""\n'
        "D=\n"
        "E=a#b\n"
    )
    assert parse_env_file(path) == {
        "A": "plain value",
        "B": "single # not a comment",
        "C": 'line\nbreak "q"',
        "D": "",
        "E": "a#b",
    }
    for bad in ["NOEQUALS\n", "1X=2\n", 'Q="open\n', "BAD-NAME=1\n"]:
        path.write_text(bad)
        with pytest.raises(ConfigError, match="x.env:1"):
            parse_env_file(path)


def test_explicit_files_must_exist_and_be_valid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read env file"):
        load_settings({}, env_file=tmp_path / "missing.env", cwd=tmp_path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({"FEDSTORE_CONFIG": str(tmp_path / "missing.toml")}, cwd=tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml_settings(bad)


def test_secrets_reach_settings_but_not_repr(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PINATA_JWT=super-secret-token\n")
    cfg = load_node_config(environ={}, cwd=tmp_path)
    assert cfg.settings["PINATA_JWT"] == "super-secret-token"
    assert "super-secret-token" not in repr(cfg)


def test_env_example_lists_every_variable() -> None:
    text = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert {v.name for v in VARIABLES} <= listed
