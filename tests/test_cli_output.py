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
