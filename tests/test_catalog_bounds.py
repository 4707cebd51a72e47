"""``catalog sql`` cannot exhaust memory or switch its runaway guard off.

``SELECT randomblob(300000000)`` once peaked at 4.4 GB RSS. The peak RSS of
real ``fedstore catalog sql`` processes is measured here (``VmHWM``) and
printed, side by side with a trivial query.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedstore.catalog import Catalog, read_only_query
from fedstore.catalog.readonly import MAX_COLUMNS, MAX_VALUE_BYTES
from fedstore.cli import main
from fedstore.errors import CatalogError
from fedstore.node.driver import python_env


@pytest.fixture
def node(tmp_path: Path) -> Path:
    with Catalog.open(tmp_path / "node") as c:
        c.add_checkpoint(1, "Qm1", cid_version=0, codec="c", raw_size=1, stored_size=1, path="p")
    return tmp_path / "node"


def _rows(n: int, expr: str = "x") -> str:
    return (
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT {n}) "
        f"SELECT {expr} FROM c"
    )


def test_value_size_is_capped(node: Path) -> None:
    db = node / "catalog.sqlite"
    with pytest.raises(CatalogError, match="would exceed"):
        read_only_query(db, "SELECT randomblob(300000000)")
    with pytest.raises(CatalogError, match="would exceed"):  # built up, not asked for
        read_only_query(db, _rows(200_000, "group_concat(printf('%08d', x))"))
    ok = read_only_query(db, f"SELECT randomblob({MAX_VALUE_BYTES})")
    assert len(ok.rows[0][0]) == MAX_VALUE_BYTES  # type: ignore[arg-type]


def test_columns_and_total_result_size_are_capped(node: Path) -> None:
    db = node / "catalog.sqlite"
    wide = "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(MAX_COLUMNS + 1))
    with pytest.raises(CatalogError, match="at most 64 columns"):
        read_only_query(db, wide)
    many = _rows(100, "randomblob(1000)")
    with pytest.raises(CatalogError, match="more than 50000 bytes"):
        read_only_query(db, many, max_bytes=50_000)
    assert len(read_only_query(db, many, max_bytes=200_000).rows) == 100


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 0.0, 1e9])
def test_query_timeout_must_be_a_real_bound(node: Path, timeout: float) -> None:
    with pytest.raises(CatalogError, match="timeout"):
        read_only_query(node / "catalog.sqlite", "SELECT 1", timeout=timeout)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "inf"), ("--timeout", "0"),
     ("--max-rows", "-1"), ("--max-rows", "0"), ("--max-rows", "\u0663")],
)  # fmt: skip
def test_catalog_sql_refuses_limits_that_switch_guards_off(
    capsys: pytest.CaptureFixture[str], node: Path, flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["catalog", "sql", "SELECT 1", flag, value, "--dir", str(node)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err.splitlines()[-1]


def test_table_view_shows_at_most_ten_thousand_rows_and_says_so(
    capsys: pytest.CaptureFixture[str], node: Path
) -> None:
    assert main(["catalog", "sql", _rows(10_050), "--dir", str(node)]) == 0
    out, err = capsys.readouterr()
    assert "10000 row(s)" in out
    assert "stopped after 10000 rows" in err and "--csv or --json" in err
    assert main(["catalog", "sql", _rows(10_050), "--json", "--dir", str(node)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10_050


def test_table_cells_are_cut_json_stays_whole(
    capsys: pytest.CaptureFixture[str], node: Path
) -> None:
    q = "SELECT printf('%.5000c', 'x') AS t, zeroblob(3000) AS b"
    assert main(["catalog", "sql", q, "--dir", str(node)]) == 0
    out = capsys.readouterr().out
    assert "(+4000 chars)" in out and "(+2500 bytes)" in out and "x" * 5000 not in out
    assert main(["catalog", "sql", q, "--json", "--dir", str(node)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["t"] == "x" * 5000 and doc[0]["b"] == "0x" + "00" * 3000


#: Runs the command line and records the process's peak RSS (VmHWM, kB) in a file at
#: exit. ``wait4``'s ru_maxrss would not do: it counts the parent's memory at fork.
_MEASURED = """
import atexit, sys
def _hwm(path=sys.argv[1]):
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(path, "w").write(line.split()[1])
atexit.register(_hwm)
from fedstore.cli import main
sys.argv = ["fedstore", *sys.argv[2:]]
sys.exit(main())
"""


def _peak_rss_mib(argv: list[str], tmp_path: Path) -> tuple[int, float, str]:
    record = tmp_path / "hwm.txt"
    record.unlink(missing_ok=True)
    proc = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-c", _MEASURED, str(record), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=python_env(),
        timeout=300,
    )
    return proc.returncode, int(record.read_text()) / 1024, proc.stderr.decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc")
def test_peak_memory_of_hostile_queries_is_bounded(
    node: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["catalog", "sql"]
    where = ["--dir", str(node)]
    rc, trivial, err = _peak_rss_mib([*base, "SELECT 1", *where], tmp_path)
    assert rc == 0, err
    figures = {"SELECT 1": trivial}
    hostile = {
        "randomblob(100 MB)": ("SELECT randomblob(100000000)", []),
        "1 MiB blob, table": (f"SELECT randomblob({MAX_VALUE_BYTES})", []),
        "1 MiB blob, json": (f"SELECT randomblob({MAX_VALUE_BYTES})", ["--json"]),
        "200k rows x 300 B, csv": (_rows(200_000, "randomblob(300)"), ["--csv"]),
        "200k rows, table": (_rows(200_000, "hex(randomblob(30))"), []),
    }
    for name, (sql, extra) in hostile.items():
        rc, peak, err = _peak_rss_mib([*base, sql, *extra, *where], tmp_path)
        assert "Traceback" not in err, err
        figures[name] = peak
    with capsys.disabled():
        print(
            "\ncatalog sql peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items())
        )
    for name, peak in figures.items():
        # was 1.5 GB for 100 MB of randomblob (4.4 GB for 300 MB)
        assert peak < trivial + 250, f"{name}: {peak:.0f} MiB (SELECT 1: {trivial:.0f} MiB)"
