"""Tables printed to a pipe keep every column whole."""

from __future__ import annotations

import pytest

from fedstore.console import PIPE_WIDTH, table_console


def test_piped_tables_are_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert table_console().width == PIPE_WIDTH


def test_columns_env_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "99")
    assert table_console().width == 99


def test_checkpoint_ls_shows_whole_cids(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from fedstore.cli import main
    from fedstore.format.weight_files import save_weights_file

    monkeypatch.delenv("COLUMNS", raising=False)
    weights = tmp_path / "w.npz"
    save_weights_file(weights, {"layer.weight": np.ones((4, 4), np.float32)})
    node = tmp_path / "node"
    assert (
        main(["checkpoint", "save", "--dir", str(node), "--round", "1", "--weights", str(weights)])
        == 0
    )
    capsys.readouterr()
    assert main(["checkpoint", "ls", "--dir", str(node)]) == 0
    out = capsys.readouterr().out
    from fedstore.store import LocalStore

    with LocalStore(node) as store:
        cid = store.latest().cid
    assert out.count(cid) == 2  # in the table and on the "latest" line, never cut
    assert "…" not in out


# ------------------------------------------------------------------ text from peers

#: What a hostile peer puts in checkpoint metadata and tensor names: a window-title
#: OSC, a colour change, a bell, a cursor move, a bidi override, and Rich markup.
HOSTILE = (
    "\x1b]0;owned\x07\x1b[31mred\x1b[2J\r\x08\u202egnp.exe\x9b[link=https://evil.test]x[/link]"
)
RAW_CONTROLS = ("\x1b", "\x07", "\x08", "\r", "\u202e", "\x9b")


def _assert_no_controls(text: str) -> None:
    for ch in RAW_CONTROLS:
        assert ch not in text, repr(ch)
    assert "\x1b]8;" not in text  # no hyperlink made out of [link=...] markup


def test_clean_escapes_every_unprintable_character() -> None:
    from fedstore.console import clean

    assert clean("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert clean("a\x1bb\nc\td\x00\u202e\U000e0041") == (
        "a\\x1bb\\x0ac\\x09d\\x00\\u202e\\U000e0041"
    )
    assert clean("x" * 20, limit=5) == "xxxxx… (+15 chars)"


def _hostile_checkpoint(tmp_path, capsys):  # type: ignore[no-untyped-def]
    import numpy as np

    from fedstore.cli import main
    from fedstore.store import LocalStore

    node = tmp_path / "node"
    with LocalStore(node) as store:  # as a checkpoint fetched from a peer is stored
        store.save(
            1,
            {"layer[link=https://evil.test]x[/link]": np.zeros(3, np.float32)},
            {"note": HOSTILE, f"key{HOSTILE}": "v"},
        )
    capsys.readouterr()
    return node, main


def test_checkpoint_inspect_escapes_peer_metadata(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "400")
    node, main = _hostile_checkpoint(tmp_path, capsys)
    assert main(["checkpoint", "inspect", "--dir", str(node)]) == 0
    out = capsys.readouterr().out
    _assert_no_controls(out)
    assert "\\x1b]0;owned\\x07" in out and "\\u202egnp.exe" in out
    assert "[link=https://evil.test]x[/link]" in out  # shown, not interpreted
    # JSON stays exact JSON: the values round-trip byte for byte
    import json

    assert main(["checkpoint", "inspect", "--json", "--dir", str(node)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metadata"]["note"] == HOSTILE


def test_catalog_sql_escapes_values_in_the_table_only(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import csv
    import io
    import json

    monkeypatch.setenv("COLUMNS", "400")
    node, main = _hostile_checkpoint(tmp_path, capsys)
    from fedstore.catalog import Catalog

    with Catalog.open(node) as cat:  # an announcement's topic and sender come from the network
        cat.record_announcement(
            2, "QmNbLVc7DnQvVDWCPFGb38mJJbVjnCejQGB17U6aWAYBuZ", "peer", HOSTILE
        )
    q = "SELECT topic AS t, char(27) || '[5m' AS blink FROM announcements"
    assert main(["catalog", "sql", q, "--dir", str(node)]) == 0
    out = capsys.readouterr().out
    _assert_no_controls(out)
    assert "\\x1b[5m" in out
    assert main(["catalog", "sql", q, "--json", "--dir", str(node)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["t"] == HOSTILE
    assert main(["catalog", "sql", q, "--csv", "--dir", str(node)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[1][0] == HOSTILE


def test_pins_ls_escapes_backend_error_texts(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fedstore.catalog import Catalog
    from fedstore.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    node = tmp_path / "node"
    cid = "QmNbLVc7DnQvVDWCPFGb38mJJbVjnCejQGB17U6aWAYBuZ"
    with Catalog.open(node) as cat:
        cat.set_pin(cid, "kubo", "failed", error=f"server said {HOSTILE}")
    capsys.readouterr()
    assert main(["pins", "ls", "--dir", str(node)]) == 0
    out = capsys.readouterr().out
    _assert_no_controls(out)
    assert "server said" in out and "\\x1b]0;owned" in out


def test_node_events_escape_what_peers_wrote() -> None:
    import io

    from fedstore.cli.node_cmd import Output

    for machine in (True, False):
        stream = io.StringIO()
        Output(machine, stream).event("ERROR", f"peer sent {HOSTILE}")
        _assert_no_controls(stream.getvalue())
        assert "\\x1b]0;owned" in stream.getvalue()
