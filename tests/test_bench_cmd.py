"""``fedstore bench`` end to end at tiny sizes: structure of the table and JSON, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedstore.bench import BenchSizes, Row, SectionResult, Target, run_bench
from fedstore.bench.runner import SECTIONS, format_value, render_table, write_json
from fedstore.cli import main

TINY = [
    "model_mb=1",
    "format_runs=1",
    "cid_mib=1",
    "cid_runs=1",
    "rss_mib=4",
    "catalog_rows=300",
    "catalog_runs=1",
    "peers=2",
    "announcements=2",
    "warmup=0",
    "catchup_mb=1",
    "catchup_runs=1",
    "startup_runs=1",
    "updates_rounds=2",
    "verify_rounds=3",
    "swarm_mb=0.5",
    "swarm_trainers=2",
    "federation_mb=2",  # updates above the inline limit: by CID
    "federation_rounds=1",
    "federation_trainers=2",
]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_section_runs_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "report" / "bench.json"
    argv = ["bench", "--quick", "--json", str(out_json), "--dir", str(tmp_path)]
    for size in TINY:
        argv += ["--size", size]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # progress on stderr, one start line per section
    for i, name in enumerate(SECTIONS, 1):
        assert f"[{i}/{len(SECTIONS)}] {name}" in err
    assert "fedstore bench (quick sizes)" in out and "targets met:" in out
    for variant in ("pickle", "np.savez", "safetensors", "sha256sum", "directory scan"):
        assert variant in out

    report = json.loads(out_json.read_text())
    assert report["quick"] is True and report["failed_sections"] == []
    assert report["command"].startswith("fedstore bench --quick --size model_mb=1")
    assert report["sizes"]["catalog_rows"] == 300 and report["sizes"]["peers"] == 2
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section["error"])
        if not section["rows"]:  # only a section that cannot run here (netns needs root)
            assert section["notes"][0].startswith("skipped: "), (name, section["notes"])
            continue
        for row in section["rows"]:
            assert row["value"] > 0, (name, row)
            if row["baseline"] is not None:
                assert row["ratio"] is not None and row["ratio"] > 0

    fmt = report["sections"]["format"]["rows"]
    variants = {r["variant"] for r in fmt}
    assert variants == {
        "pickle",
        "pickle, file object",
        "np.savez",
        "safetensors",
        "fedstore",
        "fedstore, via bytes",
    }
    fed_bytes = next(
        r for r in fmt if r["measure"] == "bytes stored" and r["variant"] == "fedstore"
    )
    assert fed_bytes["baseline"] == "pickle" and fed_bytes["target"]["threshold"] == 0.84
    assert isinstance(fed_bytes["met"], bool)
    # every timing figure kept its samples; medians are among them
    for r in fmt:
        if r["kind"] == "time":
            assert len(r["samples"]) == 1 and r["samples"][0] == r["value"]
    announce = report["sections"]["announce"]["rows"]
    assert {r["variant"] for r in announce} == {"median", "p95", "max"}
    assert report["sections"]["announce"]["params"]["peers"] == 2
    catchup = {r["variant"] for r in report["sections"]["catchup"]["rows"]}
    assert "read + sha256" in catchup and "fedstore fetch + verify + load" in catchup
    startup = report["sections"]["startup"]
    rows = {(r["measure"], r["variant"]): r for r in startup["rows"]}
    cached = rows["wall time, bytecode cached", "fedstore --help"]
    assert cached["baseline"] == "python -c pass" and cached["target"]["threshold"] == 0.3
    assert ("wall time, compiled from source", "fedstore --help − python -c pass") in rows
    assert startup["params"]["heavy_modules_imported"] == []
    assert not list(tmp_path.glob("fedstore-bench-*")), "temporary directories were left behind"


def test_failing_section_is_an_error_row_and_the_others_still_run(tmp_path: Path) -> None:
    def broken(sizes: BenchSizes, workdir: Path, say: object) -> SectionResult:
        (workdir / "scratch").write_text("x")
        raise RuntimeError("boom: backend exploded")

    def fine(sizes: BenchSizes, workdir: Path, say: object) -> SectionResult:
        result = SectionResult("catalog", "Catalog")
        result.add(Row("m", "fedstore", 2.0, "s", "time", "base", 0.5, Target("<=", 1.0)))
        result.add(Row("m", "base", 4.0, "s", "time"))
        return result

    report = run_bench(
        BenchSizes.quick(),
        only=["format", "catalog"],
        workdir=tmp_path,
        sections={"format": broken, "catalog": fine},
    )
    assert [s.name for s in report.sections] == ["format", "catalog"]
    assert report.failed == ["format"]
    assert report.sections[0].error == "RuntimeError: boom: backend exploded"
    assert report.sections[1].ok and report.targets() == (1, 1)
    path = write_json(report, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["sections"]["format"] == {
        "title": "Checkpoint save/load",
        "status": "error",
        "error": "RuntimeError: boom: backend exploded",
        "seconds": data["sections"]["format"]["seconds"],
        "params": {},
        "rows": [],
        "notes": [],
    }
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert "ERROR: RuntimeError: boom" in text and "baseline" in text and "≤ 1× ✓" in text
    assert not list(tmp_path.glob("fedstore-bench-*"))


def test_command_exit_code_is_1_when_a_section_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fedstore.bench.catalog_bench as catalog_bench

    def broken(sizes: BenchSizes, workdir: Path, say: object) -> SectionResult:
        raise OSError("disk full")

    monkeypatch.setattr(catalog_bench, "run", broken)
    rc = main(["bench", "--only", "catalog", "--json", str(tmp_path / "b.json")])
    assert rc == 1
    out = capsys.readouterr().out
    assert "ERROR: OSError: disk full" in out
    assert json.loads((tmp_path / "b.json").read_text())["failed_sections"] == ["catalog"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "format,nosuch"], "unknown section(s) nosuch"),
        (["--only", ","], "unknown section(s) (none given)"),
        (["--size", "model_mb"], "expected NAME=VALUE"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("nosuch=1", "unknown size 'nosuch'"),
        ("peers=lots", "must be a number"),
        ("cid_mib=0", "positive"),
    ],
)
def test_bad_sizes_exit_2(size: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--size", size]) == 2
    assert message in capsys.readouterr().err


def test_sizes_and_value_formatting() -> None:
    quick, full = BenchSizes.quick(), BenchSizes.full()
    assert full.model_mb == 100 and full.cid_mib == 256 and full.rss_mib == 1024
    assert full.catalog_rows == 100_000 and full.peers == 8 and full.catchup_mb == 100
    assert quick.model_mb < full.model_mb and quick.peers < full.peers
    assert quick.with_overrides({"model_mb": "2.5"}).model_mb == 2.5
    assert isinstance(quick.with_overrides({"peers": "3"}).peers, int)
    assert format_value(Row("m", "v", 1.5, "s", "time")) == "1.50 s"
    assert format_value(Row("m", "v", 0.25, "s", "time")) == "250 ms"
    assert format_value(Row("m", "v", 0.0004, "s", "time")) == "0.400 ms"
    assert format_value(Row("m", "v", 512.4, "MB/s", "throughput")) == "512 MB/s"
    row = Row("m", "v", 250.0, "ms", "time", target=Target("<", 200.0, on="value"))
    assert row.met is False and row.target is not None and row.target.text("ms") == "< 200 ms"
