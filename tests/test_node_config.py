"""Configuration precedence (flags > env > .env > fedstore.toml), parsing and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedstore.config import (
    CORE_SETTINGS,
    NodeConfig,
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
        {"FEDSTORE_REANNOUNCE_INTERVAL": "1.5", "FEDSTORE_DIR": None},
        environ=environ,
        cwd=tmp_path,
    )
    assert cfg.role == "bootstrap"  # toml only
    assert cfg.peer_rate == 1.0  # toml only
    assert cfg.peer_burst == 20  # .env beats toml
    assert cfg.head_timeout == 300.0  # env beats .env
    assert cfg.reannounce_interval == 1.5  # flag beats env
    assert cfg.backends == ("kubo", "filesystem")  # table flattened, list joined
    assert cfg.data_dir == tmp_path / "fedstore-data"  # None flag = unset: the one default


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
        ("FEDSTORE_HEARTBEAT", "fast", "not a number"),
        ("FEDSTORE_PEER_BURST", "0", "must be between 1 and 1000000"),
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


def test_env_example_lists_every_core_setting() -> None:
    text = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert {v.name for v in CORE_SETTINGS} <= listed


# -- FEDSTORE_ names and their older aliases ----------------------------------------


def test_prefixed_names_and_their_aliases(tmp_path: Path) -> None:
    legacy = {
        "CHECKPOINT_DIR": str(tmp_path / "legacy"),
        "BOOTSTRAP_ADDR": "/ip4/1.2.3.4/tcp/1/p2p/A",
        "IS_CLOUD": "true",
        "IP": "203.0.113.1",
    }
    cfg = load_node_config(environ=legacy, cwd=tmp_path)
    assert cfg.data_dir == tmp_path / "legacy"
    assert cfg.bootstrap == ("/ip4/1.2.3.4/tcp/1/p2p/A",)
    assert cfg.announce_ip == "203.0.113.1"
    assert "CHECKPOINT_DIR" not in cfg.settings and cfg.settings["FEDSTORE_DIR"] == str(
        tmp_path / "legacy"
    )
    current = {
        "FEDSTORE_DIR": str(tmp_path / "new"),
        "FEDSTORE_BOOTSTRAP": "/ip4/5.6.7.8/tcp/1/p2p/B",
        "FEDSTORE_IS_CLOUD": "true",
        "FEDSTORE_IP": "203.0.113.2",
    }
    cfg = load_node_config(environ={**legacy, **current}, cwd=tmp_path)  # both set: prefixed wins
    assert cfg.data_dir == tmp_path / "new"
    assert cfg.bootstrap == ("/ip4/5.6.7.8/tcp/1/p2p/B",)
    assert cfg.announce_ip == "203.0.113.2"


def test_prefixed_name_in_a_file_beats_an_alias_in_the_environment(tmp_path: Path) -> None:
    """An unrelated tool's IP= in the environment does not override fedstore's own setting."""
    (tmp_path / "fedstore.toml").write_text('[fedstore]\nis_cloud = true\nip = "203.0.113.7"\n')
    cfg = load_node_config(environ={"IP": "10.0.0.1"}, cwd=tmp_path)
    assert cfg.announce_ip == "203.0.113.7"


def test_a_flag_given_under_an_alias_still_beats_the_environment(tmp_path: Path) -> None:
    cfg = load_node_config(
        {"CHECKPOINT_DIR": str(tmp_path / "flag")},
        environ={"FEDSTORE_DIR": str(tmp_path / "env")},
        cwd=tmp_path,
    )
    assert cfg.data_dir == tmp_path / "flag"


# -- numbers: finite and in range, refused at start with the setting's name --------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FEDSTORE_PEER_RATE", "nan", "FEDSTORE_PEER_RATE='nan' is not a finite number"),
        ("FEDSTORE_PEER_RATE", "inf", "FEDSTORE_PEER_RATE='inf' is not a finite number"),
        ("FEDSTORE_HEAD_TIMEOUT", "nan", "FEDSTORE_HEAD_TIMEOUT='nan' is not a finite number"),
        (
            "FEDSTORE_REANNOUNCE_INTERVAL",
            "1e-9",
            "FEDSTORE_REANNOUNCE_INTERVAL='1e-9' must be 0 (off) or between 0.1 and 86400",
        ),
        (
            "FEDSTORE_MAX_CHECKPOINT_BYTES",
            "-5",
            "FEDSTORE_MAX_CHECKPOINT_BYTES='-5' must be at least 0",
        ),
        ("FEDSTORE_HEARTBEAT", "-inf", "FEDSTORE_HEARTBEAT='-inf' is not a finite number"),
        ("FEDSTORE_CONNECT_TIMEOUT", "0", "FEDSTORE_CONNECT_TIMEOUT='0' must be between 0.1"),
        ("FEDSTORE_MAX_FETCH_SIZE", "1e9", "FEDSTORE_MAX_FETCH_SIZE='1e9' is not a whole number"),
        ("FEDSTORE_CATALOG_AUTO_UPGRADE", "perhaps", "is not a boolean"),
    ],
)
def test_numeric_settings_are_checked_at_start(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_node_config(environ={name: value}, cwd=tmp_path)
    text = str(info.value)
    assert text.startswith(message) or message in text
    assert "\n" not in text


def test_zero_switches_reannouncing_off_and_small_sane_values_pass(tmp_path: Path) -> None:
    off = load_node_config(environ={"FEDSTORE_REANNOUNCE_INTERVAL": "0"}, cwd=tmp_path)
    assert off.reannounce_interval == 0
    assert (
        load_node_config(environ={"FEDSTORE_REANNOUNCE_INTERVAL": "0.5s"}, cwd=tmp_path)
    ).reannounce_interval == 0.5


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("peer_rate", float("nan"), "FEDSTORE_PEER_RATE"),
        ("head_timeout", float("nan"), "FEDSTORE_HEAD_TIMEOUT"),
        ("reannounce_interval", 1e-9, "FEDSTORE_REANNOUNCE_INTERVAL"),
        ("peer_burst", 0, "FEDSTORE_PEER_BURST"),
    ],
)
def test_node_config_built_directly_is_checked_too(field: str, value: float, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        NodeConfig(**{field: value})  # type: ignore[arg-type]


def test_node_refuses_nan_peer_rate_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedstore.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDSTORE_PEER_RATE", "nan")
    rc = main(["node", "--dir", str(tmp_path / "n"), "--script", str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == "fedstore: error: FEDSTORE_PEER_RATE='nan' is not a finite number\n"
    assert not (tmp_path / "n").exists()  # refused before anything was created
