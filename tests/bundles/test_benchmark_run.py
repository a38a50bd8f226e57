"""`mura-monai benchmark` at toy size: real bundle trainings, an interruption, the resumed run's tables."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mura_monai.data.synthetic import generate_mura_root
from tests.bundles.bundle_runner import one_thread  # noqa: F401  (one intra-op thread here and in the bundles)


def _command(root: Path, run: Path, epochs: int = 1) -> list[str]:
    return [sys.executable, "-m", "mura_monai.cli", "benchmark", "--dataset-dir", str(root), "--output-dir", str(run),
            "--bundles", "densenet169_wbce,resnet50", "--epochs", str(epochs), "--image-size", "32", "--batch-size", "8",
            "--n-bootstrap", "50"]


def test_benchmark_survives_an_interruption_and_refuses_to_mix_budgets(tmp_path):
    generate_mura_root(tmp_path / "mura", patients=16, seed=5)
    run = tmp_path / "run"
    command = _command(tmp_path / "mura", run)

    # killed (with the training it runs) as soon as its own progress shows the first step recorded
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    shown = []
    assert first.stdout is not None
    for line in first.stdout:
        shown.append(line)
        if line.startswith("[2/5]"):
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait()
    assert shown[0].startswith("[1/5] train densenet169_wbce"), shown
    state = json.loads((run / "state.json").read_text())
    assert list(state["done"]) == ["train densenet169_wbce"]
    trained = (run / "models" / "densenet169_wbce" / "model.pt").stat().st_mtime_ns

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "[1/5] train densenet169_wbce: done before (trained)" in resumed.stdout
    assert (run / "models" / "densenet169_wbce" / "model.pt").stat().st_mtime_ns == trained
    assert "[5/5] fit and evaluate the ensemble of densenet169_wbce+resnet50" in resumed.stdout
    claims = json.loads((run / "claims.json").read_text())["claims"]
    assert {(c["method"], c["baseline"]) for c in claims} >= {("densenet169_wbce", "densenet169_wbce, one view")}
    assert any(c["method"] == "ensemble" for c in claims)
    assert all(c["verdict"] == "inconclusive at this size" for c in claims)  # a handful of valid studies
    papers = (run / "papers.md").read_text()
    for method in ("densenet169_wbce", "resnet50", "ensemble"):
        assert f"| {method} |" in papers
    valid = (tmp_path / "mura" / "MURA-v1.1" / "valid_labeled_studies.csv").read_text().strip().splitlines()
    assert f"({len(valid)} valid studies)" in papers
    # each bundle trained by its own workflow with the same budget
    for bundle in ("densenet169_wbce", "resnet50"):
        log = (run / "logs" / f"train_{bundle}.log").read_text()
        assert "Epoch[1] Complete" in log and "Epoch[2] Complete" not in log

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before") == 5

    other = subprocess.run(_command(tmp_path / "mura", run, epochs=2), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2
    assert "other settings (budget differ)" in other.stderr and len(other.stderr.strip().splitlines()) == 1
