"""`mura-monai compare`: several evaluations' metrics.json files in one table (and CSV)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mura_monai.cli import main
from mura_monai.compare import (
    body_part_table_rows,
    comparison_rows,
    format_comparison,
    human_count,
    human_duration,
    load_evaluation,
    write_comparison,
)
from mura_monai.constants import BODY_PARTS
from mura_monai.metrics import evaluate_predictions


def synthetic_records(separation: float, n_studies: int = 70, seed: int = 0) -> list[dict]:
    """Image predictions whose study AUC grows with ``separation``; every body part present."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_studies):
        label = int(i % 5 < 2)
        part = BODY_PARTS[i % len(BODY_PARTS)]
        for _ in range(1 + i % 3):
            prob = float(np.clip(0.3 + separation * label + rng.normal(0, 0.2), 0, 1))
            records.append({"study": f"s{i}", "label": label, "probability": prob, "body_part": part})
    return records


def write_evaluation(folder: Path, separation: float, bundle: str | None = "densenet169_wbce",
                     training: dict | None = None, n_studies: int = 70) -> dict:
    doc = evaluate_predictions(synthetic_records(separation, n_studies), 0.5, "mean", 50, 0)
    doc.pop("studies")
    if bundle is not None:
        doc["bundle"], doc["image_size"] = bundle, 320
    if training is not None:
        doc["training"] = training
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(doc, indent=2, allow_nan=True))
    return doc


TRAINING = {"train_time_s": 252.4, "epochs_completed": 4, "max_epochs": 20, "best_metric": 0.7,
            "n_parameters": 12_486_145, "n_trainable_parameters": 12_486_145, "model_size_mb": 47.74,
            "checkpoint_mb": 48.1, "batch_size": 16, "learning_rate": 3e-4, "enhancement": "none"}


@pytest.fixture
def three(tmp_path):
    """Three evaluations of known, differing quality: strong > medium > weak (given out of order)."""
    docs = {
        "weak": write_evaluation(tmp_path / "eval_weak", 0.05, "vgg19", TRAINING | {"n_parameters": 139_570_000}),
        "strong": write_evaluation(tmp_path / "eval_strong", 0.5, "densenet169_wbce", TRAINING),
        "medium": write_evaluation(tmp_path / "eval_medium", 0.2, "resnet50"),  # an older file: no training block
    }
    assert docs["strong"]["study"]["auc"] > docs["medium"]["study"]["auc"] > docs["weak"]["study"]["auc"]
    return tmp_path, docs


def test_overall_order_ci_and_training_columns(three):
    root, docs = three
    loaded = [load_evaluation(root / f"eval_{name}") for name in ("weak", "medium", "strong")]
    text = format_comparison(loaded)
    lines = text.splitlines()
    order = [line.split()[0] for line in lines[1:4]]
    assert order == ["densenet169_wbce", "resnet50", "vgg19"]
    study = docs["strong"]["study"]
    lo, hi = study["ci95"]["auc"]
    assert f"{study['auc']:.3f} [{lo:.3f}, {hi:.3f}]" in lines[1]
    klo, khi = study["ci95"]["kappa"]
    assert f"{study['kappa']:.3f} [{klo:.3f}, {khi:.3f}]" in lines[1]
    assert "4/20" in lines[1] and "4 min 12 s" in lines[1] and "12.5 M" in lines[1] and "47.7" in lines[1]
    assert "139.6 M" in lines[3]
    assert lines[2].split()[-4:] == ["—"] * 4  # resnet50: no training block


def test_csv_is_long_format_and_equals_the_json(three, tmp_path):
    root, docs = three
    loaded = [load_evaluation(root / f"eval_{name}") for name in ("weak", "strong", "medium")]
    md_path, csv_path = write_comparison(loaded, tmp_path / "cmp")
    assert md_path == tmp_path / "cmp" / "comparison.md" and csv_path.name == "comparison.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (2 + len(BODY_PARTS))
    assert [r["bundle"] for r in rows[:: 2 + len(BODY_PARTS)]] == ["densenet169_wbce", "resnet50", "vgg19"]
    by_name = {"densenet169_wbce": docs["strong"], "resnet50": docs["medium"], "vgg19": docs["weak"]}
    for row in rows:
        doc = by_name[row["bundle"]]
        block = doc[row["level"]] if row["level"] in ("study", "image") else doc["per_body_part"][row["level"]]
        for column in ("n", "tp", "fp", "tn", "fn"):
            assert int(row[column]) == block[column]
        for column in ("auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold"):
            value = block[column]
            assert (row[column] == "" and math.isnan(value)) or float(row[column]) == value
        for metric in ("auc", "kappa"):
            assert [float(row[f"{metric}_lo"]), float(row[f"{metric}_hi"])] == block["ci95"][metric]
        training = doc.get("training", {})
        for column in ("train_time_s", "epochs_completed", "n_parameters", "model_size_mb"):
            assert row[column] == ("" if column not in training else str(training[column]))
    assert {r["level"] for r in rows} == {"study", "image", *BODY_PARTS}
    assert comparison_rows(loaded)[0]["auc"] == docs["strong"]["study"]["auc"]  # numbers, not strings


def test_per_body_part_table_has_every_part_and_every_bundle(three):
    root, docs = three
    loaded = [load_evaluation(root / f"eval_{name}") for name in ("weak", "medium", "strong")]
    rows = body_part_table_rows(loaded)
    assert rows[0] == ["body part", "densenet169_wbce", "resnet50", "vgg19"]
    assert [r[0] for r in rows[1:]] == [*BODY_PARTS, "all studies"]
    hand = docs["strong"]["per_body_part"]["XR_HAND"]
    assert rows[1 + BODY_PARTS.index("XR_HAND")][1] == f"AUC {hand['auc']:.3f} · κ {hand['kappa']:.2f}"
    text = format_comparison(loaded)
    assert all(part in text for part in BODY_PARTS)


def test_markdown_warns_only_when_the_valid_sets_differ(tmp_path):
    same = [write_evaluation(tmp_path / "a", 0.5, "a"), write_evaluation(tmp_path / "b", 0.2, "b")]
    md, _ = write_comparison([load_evaluation(tmp_path / n) for n in "ab"], tmp_path / "same")
    text = md.read_text()
    assert "different valid sets" not in text
    assert "| densenet169_wbce" not in text and "| a |" in text and "| XR_WRIST |" in text
    assert "a: mean, > 0.500; b: mean, > 0.500" in text
    write_evaluation(tmp_path / "c", 0.3, "c", n_studies=60)
    md, _ = write_comparison([load_evaluation(tmp_path / n) for n in "abc"], tmp_path / "differ")
    text = md.read_text()
    assert "different valid sets" in text and "not like for like" in text
    assert f"a {same[0]['n_studies']} studies" in text and "c 60 studies" in text


def test_folder_name_when_bundle_is_absent_and_to_tell_equal_names_apart(tmp_path):
    write_evaluation(tmp_path / "old_run", 0.4, bundle=None)
    write_evaluation(tmp_path / "run_320px", 0.3, "resnet50")
    write_evaluation(tmp_path / "run_224px", 0.2, "resnet50")
    docs = [load_evaluation(tmp_path / name / "metrics.json") for name in ("old_run", "run_320px", "run_224px")]
    names = body_part_table_rows(docs)[0][1:]
    assert names == ["old_run", "resnet50 (run_320px)", "resnet50 (run_224px)"]


def test_cli_compare_prints_both_tables_and_the_paths(three, tmp_path, capsys):
    root, _ = three
    out = tmp_path / "cmp"
    assert main(["compare", str(root / "eval_weak"), str(root / "eval_strong"), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "study AUC [95% CI]" in printed and "XR_SHOULDER" in printed
    assert printed.index("densenet169_wbce") < printed.index("vgg19")
    assert str(out / "comparison.md") in printed and str(out / "comparison.csv") in printed
    assert (out / "comparison.md").is_file() and (out / "comparison.csv").is_file()


def test_cli_compare_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert "usage: mura-monai compare" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing", "notours"])
def test_cli_compare_bad_input_is_one_line_naming_the_path(bad, three, tmp_path, capsys):
    root, _ = three
    target = tmp_path / bad
    if bad == "notours":
        target.mkdir()
        (target / "metrics.json").write_text(json.dumps({"studies": []}))
    code = main(["compare", str(root / "eval_strong"), str(target), "--output-dir", str(tmp_path / "cmp")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err and err.startswith("mura-monai compare: error:")
    assert not (tmp_path / "cmp").exists()


def test_load_evaluation_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_evaluation(tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_evaluation(tmp_path / "broken.json")


def test_human_formats():
    assert human_duration(252.4) == "4 min 12 s" and human_duration(42) == "42 s"
    assert human_duration(7500) == "2 h 05 min" and human_duration(None) == "—"
    assert human_count(12_486_145) == "12.5 M" and human_count(840_200) == "840.2 k" and human_count(None) == "—"
