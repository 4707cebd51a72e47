"""Where users meet update encodings: ``fedstore demo --update-encoding`` and ``fedstore bench``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedstore.bench import BenchSizes, run_bench


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedstore", "demo", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, COLUMNS="200"),
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_demo_with_top_k_updates(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _demo(
        tmp_path,
        *("--update-encoding", "topk:0.10", "--rounds", "2", "--trainers", "2"),
        *("--late-trainer", "0", "--plain", "--out", str(out), "--timeout", "150"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "topk:0.1 updates" in proc.stdout  # the canonical name, in the banner
    sent = [int(n.replace(",", "")) for n in re.findall(r"updates ([\d,]+) B", proc.stdout)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["config"]["update_encoding"] == "topk:0.1"
    # the digits model's float32 checkpoint is about 8.4 kB; a tenth of it goes out
    assert 0 < summary["config"]["update_bytes_mean"] < 2000
    assert all(0 < n < 2000 for n in sent)


def test_demo_refuses_an_unknown_encoding_in_one_line(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--update-encoding", "int4", "--plain", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "unknown update encoding 'int4'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_bench_section_reports_bytes_and_accuracy_against_float32(tmp_path: Path) -> None:
    sizes = BenchSizes.quick().with_overrides({"updates_rounds": "2", "updates_seeds": "1"})
    report = run_bench(sizes, only=["updates"], quick=True, workdir=tmp_path)
    assert report.failed == []
    rows = report.sections[0].rows
    by = {(r.measure.split(" (")[0], r.variant): r for r in rows}
    assert by[("bytes per update", "float32")].baseline is None
    for variant, bound in (("float16", 0.5), ("int8", 0.26)):
        size = by[("bytes per update", variant)]
        assert size.baseline == "float32" and size.target is not None
        assert size.target.threshold == bound and size.met is not None
        acc = by[("final test accuracy", variant)]
        assert acc.target is not None and acc.target.on == "value" and acc.met is not None
    topk = [by[("bytes per update", f"topk:{f}")].value for f in ("0.3", "0.1", "0.03", "0.01")]
    assert topk == sorted(topk, reverse=True)  # the curve: fewer entries, fewer bytes
    assert all(0 < r.value <= 1 for r in rows if r.unit == "accuracy")
    assert any("UPDATE messages" in n for n in report.sections[0].notes)
