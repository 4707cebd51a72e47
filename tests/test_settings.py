"""Declared settings: fedstore.toml tables per plugin, unknown-name reports, `config show`,
the generated .env.example, and the values plugins receive."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fedstore.backends import BackendContext, Setting, lifespan_nursery, load_backend
from fedstore.cli import main
from fedstore.cli.config_cmd import env_example_text
from fedstore.config import CORE_SETTINGS, load_settings, resolve_settings
from fedstore.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- fedstore.toml: every plugin's settings have a home -------------------------------


def test_kubo_table_reaches_the_kubo_plugin(tmp_path: Path) -> None:
    """`[kubo] api` used to become KUBO_API and be ignored; now it is FEDSTORE_KUBO_API."""
    (tmp_path / "fedstore.toml").write_text(
        '[kubo]\napi = "/ip4/127.0.0.9/tcp/5099"\npin_timeout = "12s"\n'
        '[pinata]\njwt = "jwt-from-toml"\n[pinata.gateway]\nurl = "gw.example.org"\n'
        '[filesystem]\nroot = "objects-here"\n'
    )
    settings = load_settings({}, cwd=tmp_path)
    assert settings["FEDSTORE_KUBO_API"] == "/ip4/127.0.0.9/tcp/5099"
    assert "KUBO_API" not in settings
    kubo = load_backend("kubo", settings)
    assert kubo.api_url == "http://127.0.0.9:5099"  # type: ignore[attr-defined]
    assert kubo.pin_timeout == 12  # type: ignore[attr-defined]
    pinata = load_backend("pinata", settings)
    assert pinata.config.gateway_url == "https://gw.example.org"  # type: ignore[attr-defined]
    assert load_backend("filesystem", settings).root == Path("objects-here")  # type: ignore[attr-defined]


def test_top_level_names_and_the_core_table(tmp_path: Path) -> None:
    (tmp_path / "fedstore.toml").write_text(
        'FEDSTORE_KUBO_TOKEN = "tok"\nfedstore_role = "bootstrap"\n'
        '[fedstore]\nbackends = ["kubo", "filesystem"]\ndir = "d"\nauto_sync = true\n'
    )
    settings = load_settings({}, cwd=tmp_path)
    assert settings["FEDSTORE_KUBO_TOKEN"] == "tok"
    assert settings["FEDSTORE_ROLE"] == "bootstrap"
    assert settings["FEDSTORE_BACKENDS"] == "kubo,filesystem"
    assert settings["FEDSTORE_DIR"] == "d"
    assert settings["FEDSTORE_AUTO_SYNC"] == "true"


def test_unknown_toml_keys_and_sections_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml = tmp_path / "fedstore.toml"
    toml.write_text(
        'fedstore_rol = "x"\n[kubo]\napii = "/ip4/1.2.3.4/tcp/1"\n'
        "[pinatta]\njwt = 1\n[fedstore]\nheartbeet = 1\n"
    )
    with caplog.at_level(logging.WARNING):
        load_settings({}, cwd=tmp_path)
    assert _warnings(caplog) == [
        f"{toml}: unknown key 'fedstore_rol'; closest known: FEDSTORE_ROLE",
        f"{toml}: unknown key 'apii' in [kubo]; closest known: api",
        f"{toml}: unknown section [pinatta]; closest known: [pinata]",
        f"{toml}: unknown key 'heartbeet' in [fedstore]; closest known: heartbeat",
    ]


def test_unknown_env_file_names_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = tmp_path / ".env"
    env.write_text("PINATA_JTW=abc\nFEDSTORE_PEER_RATE=3\nFEDSTORE_KUBO_API=/ip4/1.1.1.1/tcp/1\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings({}, cwd=tmp_path)
    assert _warnings(caplog) == [f"{env}: unknown setting 'PINATA_JTW'; closest known: PINATA_JWT"]
    assert "abc" not in caplog.text  # names are reported, values never
    assert settings["FEDSTORE_PEER_RATE"] == "3"


def test_toml_values_of_unsupported_type_and_depth(tmp_path: Path) -> None:
    toml = tmp_path / "fedstore.toml"
    toml.write_text("[kubo]\napi = 2024-01-01\n")
    with pytest.raises(ConfigError, match=r"\[kubo\] api has a value of unsupported type"):
        load_settings({}, cwd=tmp_path)
    toml.write_text("[a.b.c.d.e]\nx = 1\n")
    with pytest.raises(ConfigError, match="nests more than 4 tables deep"):
        load_settings({}, cwd=tmp_path)


def test_precedence_is_recorded_per_setting(tmp_path: Path) -> None:
    (tmp_path / "fedstore.toml").write_text("[fedstore]\npeer_rate = 1\npeer_burst = 2\n")
    (tmp_path / ".env").write_text("FEDSTORE_PEER_BURST=3\nCHECKPOINT_DIR=old\n")
    resolved = resolve_settings(
        {"FEDSTORE_HEAD_TIMEOUT": "9"},
        flags={"FEDSTORE_ROLE": "bootstrap", "FEDSTORE_LISTEN": None},
        cwd=tmp_path,
    )
    by_name = {s.name: s for s in CORE_SETTINGS}
    origin = {n: str(resolved.origin(by_name[n])) for n in by_name}
    assert origin["FEDSTORE_ROLE"] == "flag"
    assert origin["FEDSTORE_HEAD_TIMEOUT"] == "environment"
    assert origin["FEDSTORE_PEER_BURST"] == f".env ({tmp_path / '.env'})"
    assert origin["FEDSTORE_PEER_RATE"] == (
        f"fedstore.toml ({tmp_path / 'fedstore.toml'}: [fedstore] peer_rate)"
    )
    assert origin["FEDSTORE_DIR"] == f".env ({tmp_path / '.env'}, as CHECKPOINT_DIR)"
    assert origin["FEDSTORE_LISTEN"] == "default"


# -- fedstore config show -------------------------------------------------------------


def test_config_show_json_sources_and_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("FEDSTORE_CONFIG", "FEDSTORE_ENV_FILE", "PINATA_JWT", "FEDSTORE_KUBO_API"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "fedstore.toml").write_text('[kubo]\napi = "/ip4/127.0.0.1/tcp/5001"\n')
    (tmp_path / ".env").write_text("PINATA_JWT=very-secret-jwt-0042\n")
    monkeypatch.setenv("FEDSTORE_HEAD_TIMEOUT", "7")
    assert main(["config", "show", "--json", "--set", "FEDSTORE_PEER_RATE=4"]) == 0
    out = capsys.readouterr().out
    assert "very-secret-jwt-0042" not in out
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["PINATA_JWT"]["value"] == "***" and rows["PINATA_JWT"]["source"] == ".env"
    assert rows["PINATA_JWT"]["secret"] is True and rows["PINATA_JWT"]["owner"] == "pinata"
    assert rows["FEDSTORE_KUBO_API"]["source"] == "fedstore.toml"
    assert rows["FEDSTORE_KUBO_API"]["detail"].endswith("[kubo] api")
    assert rows["FEDSTORE_HEAD_TIMEOUT"] == {**rows["FEDSTORE_HEAD_TIMEOUT"], "value": "7"}
    assert rows["FEDSTORE_HEAD_TIMEOUT"]["source"] == "environment"
    assert rows["FEDSTORE_PEER_RATE"]["source"] == "flag"
    assert rows["FEDSTORE_PEER_BURST"]["source"] == "default"
    assert rows["FEDSTORE_PEER_BURST"]["value"] == "40"
    assert rows["FEDSTORE_HTTP_ATTEMPTS"]["owner"] == "kubo,pinata"
    # every declared setting is listed: the core's and every installed plugin's
    assert {s.name for s in CORE_SETTINGS} <= set(rows)
    assert {"FEDSTORE_FS_ROOT", "IPFS_PATH", "PINATA_TUS_CHUNK"} <= set(rows)
    # the table form redacts too
    assert main(["config", "show"]) == 0
    table = capsys.readouterr().out
    assert "very-secret-jwt-0042" not in table and "***" in table


def test_backends_command_lists_each_backends_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDSTORE_BACKENDS", raising=False)
    monkeypatch.setenv("IPFS_PATH", str(tmp_path / "no-ipfs"))
    monkeypatch.setenv("FEDSTORE_KUBO_API", "/ip4/127.0.0.1/tcp/5001")
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["backends", "--no-health"]) == 0
    out = capsys.readouterr().out
    for expected in ("kubo settings", "[kubo] api", "FEDSTORE_KUBO_PIN_TIMEOUT", "[pinata] jwt"):
        assert expected in out
    assert "bitswap settings" in out and "FEDSTORE_BITSWAP_CACHE_TTL" in out
    assert (
        out.rstrip()
        .splitlines()[-1]
        .startswith(
            "default chain (*): kubo,filesystem (kubo: FEDSTORE_KUBO_API is set; filesystem: always"
        )
    )


# -- .env.example is generated --------------------------------------------------------


def test_env_example_is_generated_from_the_declarations() -> None:
    committed = (REPO / ".env.example").read_text(encoding="utf-8")
    assert committed == env_example_text(builtin_only=True), (
        ".env.example drifted from the declared settings; regenerate it with "
        "'fedstore config example --builtin -o .env.example'"
    )


def test_env_example_command_writes_the_template(tmp_path: Path) -> None:
    out = tmp_path / "x.env"
    assert main(["config", "example", "--builtin", "-o", str(out)]) == 0
    text = out.read_text()
    assert "# FEDSTORE_KUBO_API=\n" in text and "# fedstore.toml: [kubo] api\n" in text
    assert text.count("# FEDSTORE_HTTP_ATTEMPTS=4\n") == 1  # shared by kubo and pinata


# -- the Setting type ------------------------------------------------------------------


def test_setting_reading_and_checks() -> None:
    s = Setting("X_LIMIT", "5", "a limit", kind="int", minimum=1, maximum=10)
    assert s.integer({}) == 5 and s.integer({"X_LIMIT": " 7 "}) == 7
    for bad, why in [("0", "between 1 and 10"), ("x", "whole number"), ("1.5", "whole number")]:
        with pytest.raises(ConfigError, match=why):
            s.integer({"X_LIMIT": bad})
    secret = Setting("X_TOKEN_SIZE", kind="float", secret=True, minimum=0)
    with pytest.raises(ConfigError) as info:
        secret.number({"X_TOKEN_SIZE": "tok-123-nan"})
    assert "tok-123" not in str(info.value) and "X_TOKEN_SIZE=***" in str(info.value)
    assert Setting("X_T", "2s", kind="duration").number({}) == 2.0
    assert Setting("FEDSTORE_KUBO_API").toml_key("kubo") == "api"
    assert Setting("PINATA_JWT").toml_key("pinata") == "jwt"
    with pytest.raises(ValueError):
        Setting("lower_case")
    with pytest.raises(ValueError):
        Setting("X_SECRET", "default", secret=True)


async def test_lifespan_nursery_passes_the_body_error_through_unwrapped() -> None:
    import trio

    started = trio.Event()

    async def background() -> None:
        started.set()
        await trio.sleep_forever()

    with pytest.raises(KeyError):
        async with lifespan_nursery() as nursery:
            nursery.start_soon(background)
            await started.wait()
            raise KeyError("from the body")
    ctx = BackendContext()
    assert ctx.in_node is False


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"FEDSTORE_ROLE=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"\.env is not UTF-8 text"):
        load_settings({}, cwd=tmp_path)
    (tmp_path / ".env").unlink()
    (tmp_path / "fedstore.toml").write_bytes(b'fedstore_role = "\xff"\n')
    with pytest.raises(ConfigError, match="fedstore.toml is not UTF-8 text"):
        load_settings({}, cwd=tmp_path)
    (tmp_path / "fedstore.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="fedstore.toml") as info:
        load_settings({}, cwd=tmp_path)
    assert "\n" not in str(info.value)
