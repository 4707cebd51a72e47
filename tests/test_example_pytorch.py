"""examples/pytorch_mlp under ``fedstore simulate``, and its export loaded back into PyTorch.

Needs PyTorch: ``tox -e torch`` (part of ``bash scripts/test.sh``) runs it;
elsewhere it is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; 'tox -e torch' (run by scripts/test.sh) runs these"
)

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.multiprocess]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pytorch_mlp"


def test_pytorch_example_trains_and_exports_a_model_torch_loads(tmp_path: Path) -> None:
    out, model = tmp_path / "report", tmp_path / "digits_mlp.safetensors"
    proc = subprocess.run(
        [
            sys.executable, "-m", "fedstore", "simulate", "--app", f"{EXAMPLE}/app.py:app",
            "--trainers", "2", "--rounds", "2", "--plain", "--out", str(out),
            "--export", str(model), "--timeout", "240",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["participants"] for r in rounds] == [2, 2]
    assert summary["final_accuracy"] > 0.9  # an MLP learns the digits in two rounds
    assert len(set(summary["peer_final_cids"].values())) == 1
    # the exported file is what predict.py (plain PyTorch, no fedstore) loads
    shown = subprocess.run(
        [sys.executable, str(EXAMPLE / "predict.py"), str(model)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert f"test accuracy {summary['final_accuracy']:.4f}" in shown.stdout
