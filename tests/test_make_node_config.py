"""``api.make_node_config(settings=...)`` honours every setting it is given, or refuses.

Issue 15 item 15: ``FEDSTORE_BACKENDS`` and ``FEDSTORE_LISTEN`` passed in
``settings`` were silently replaced by the (unset) arguments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedstore.errors import ConfigError
from fedstore.federation import api


def test_backends_and_listen_in_settings_are_honoured(tmp_path: Path) -> None:
    cfg = api.make_node_config(
        role="trainer",
        data_dir=tmp_path / "t",
        settings={
            "FEDSTORE_BACKENDS": "memory, filesystem",
            "FEDSTORE_LISTEN": "/ip4/127.0.0.1/tcp/4999",
            "BOOTSTRAP_ADDR": "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx",
            "FEDSTORE_PEER_RATE": "7",
        },
        environ={},
    )
    assert cfg.backends == ("memory", "filesystem")
    assert cfg.listen == ("/ip4/127.0.0.1/tcp/4999",)
    assert cfg.bootstrap == ("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx",)
    assert cfg.peer_rate == 7.0


def test_arguments_still_win_over_the_environment(tmp_path: Path) -> None:
    cfg = api.make_node_config(
        role="bootstrap",
        data_dir=tmp_path / "a",
        backends=["filesystem"],
        listen="/ip4/127.0.0.1/tcp/5000",
        environ={"FEDSTORE_BACKENDS": "kubo", "FEDSTORE_LISTEN": "/ip4/0.0.0.0/tcp/1"},
    )
    assert cfg.backends == ("filesystem",) and cfg.listen == ("/ip4/127.0.0.1/tcp/5000",)
    assert cfg.role == "bootstrap" and cfg.data_dir == tmp_path / "a"


def test_the_same_value_twice_is_fine(tmp_path: Path) -> None:
    cfg = api.make_node_config(
        role="trainer",
        data_dir=tmp_path / "t",
        backends=["memory", "filesystem"],
        settings={"FEDSTORE_BACKENDS": "memory,filesystem", "CHECKPOINT_DIR": str(tmp_path / "t")},
        environ={},
    )
    assert cfg.backends == ("memory", "filesystem")


@pytest.mark.parametrize(
    ("kwargs", "settings", "named"),
    [
        ({"backends": ["filesystem"]}, {"FEDSTORE_BACKENDS": "kubo"}, "FEDSTORE_BACKENDS"),
        ({"listen": "/ip4/127.0.0.1/tcp/1"}, {"FEDSTORE_LISTEN": "/ip4/127.0.0.1/tcp/2"}, "LISTEN"),
        ({}, {"FEDSTORE_ROLE": "bootstrap"}, "FEDSTORE_ROLE"),
        ({}, {"CHECKPOINT_DIR": "/elsewhere"}, "FEDSTORE_DIR"),
        ({}, {"FEDSTORE_BOOTSTRAP": "/ip4/1.2.3.4/tcp/1", "BOOTSTRAP_ADDR": "/x"}, "BOOTSTRAP"),
    ],
)
def test_conflicting_values_are_refused_in_one_line(
    tmp_path: Path, kwargs: dict[str, object], settings: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as exc:
        api.make_node_config(
            role="trainer",
            data_dir=tmp_path / "t",
            settings=settings,
            environ={},
            **kwargs,  # type: ignore[arg-type]
        )
    assert "\n" not in str(exc.value)
