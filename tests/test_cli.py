"""`mura-monai` as a user runs it: installed console script, --help, one-line errors."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from mura_monai.cli import main

# console scripts live beside the interpreter of the virtual environment running the tests
SCRIPT = Path(sys.executable).parent / "mura-monai"


@pytest.mark.parametrize("command", ["synth", "infer", "evaluate", "export"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mura-monai" in capsys.readouterr().out


def test_synth_writes_a_mura_root_readable_by_the_index(tmp_path, capsys):
    from mura_monai.data import load_mura_split

    assert main(["synth", str(tmp_path / "root"), "--patients", "6", "--seed", "1"]) == 0
    assert '"train"' in capsys.readouterr().out
    train = load_mura_split(tmp_path / "root", "train")
    with open(tmp_path / "root" / "MURA-v1.1" / "train_labeled_studies.csv") as f:
        assert len(train.studies) == sum(1 for _ in csv.reader(f))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["synth", "{tmp}/x", "--patients", "0"], "--patients must be at least 1, got 0"),
        (["evaluate", "--bundle", "bundles/densenet169_wbce", "--dataset-dir", "{tmp}/nowhere", "--output-dir", "{tmp}/o"],
         "{tmp}/nowhere"),
        (["evaluate", "--bundle", "{tmp}/nobundle", "--dataset-dir", "{tmp}", "--output-dir", "{tmp}/o"], "{tmp}/nobundle"),
        (["infer", "--bundle", "{tmp}/nobundle", "{tmp}"], "{tmp}/nobundle/configs/inference.json"),
    ],
)
def test_bad_input_gives_one_line_naming_it(argv, fragment, tmp_path, capsys):
    (tmp_path / "MURA-v1.1").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment.format(tmp=tmp_path) in err


def test_evaluate_names_a_missing_csv_through_the_bundle_workflow(tiny_mura_root, tmp_path, capsys):
    """The CSV error is raised inside MONAI's config parser; the CLI still prints the path."""
    from mura_monai.model_settings import save_model_settings

    models = tmp_path / "models"
    save_model_settings(models, image_size=32)
    (models / "model.pt").write_bytes(b"")  # never loaded: the data error comes first
    (tiny_mura_root / "MURA-v1.1" / "valid_image_paths.csv").unlink()
    code = main(["evaluate", "--bundle", "bundles/densenet169_wbce", "--models-dir", str(models),
                 "--dataset-dir", str(tiny_mura_root), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "valid_image_paths.csv" in capsys.readouterr().err


def test_console_script_is_installed():
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package (make install)"
    proc = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "synth" in proc.stdout
