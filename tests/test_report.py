"""The offline HTML evaluation report and its figures, on real files in tmp_path."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mura_monai.constants import BODY_PARTS
from mura_monai.metrics import evaluate_predictions
from mura_monai.operating_points import OPERATING_POINTS, operating_points, sensitivity_specificity
from mura_monai.report import MAX_HEATMAPS, format_metrics_table, write_html_report
from mura_monai.report_figures import brier_score, calibration_figure, pr_figure, roc_figure

FIGURES = ("roc.png", "pr.png", "calibration.png")


def _records(n_studies: int = 140, seed: int = 0, positive_rate: float = 0.4) -> list[dict]:
    """Labelled image records whose probabilities lean towards the label, 1-3 views per study."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_studies):
        part = BODY_PARTS[i % len(BODY_PARTS)]
        label = int(rng.random() < positive_rate)
        for view in range(int(rng.integers(1, 4))):
            prob = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0.0, 1.0))
            records.append({"study": f"{part}/study{i}", "body_part": part, "label": label,
                            "path": f"{part}/study{i}/image{view}.png", "probability": prob})
    return records


def _evaluation(records: list[dict]) -> tuple[dict, list[dict]]:
    doc = evaluate_predictions(records, n_bootstrap=50)
    return doc, doc.pop("studies")


@pytest.fixture(scope="module")
def evaluation() -> tuple[dict, list[dict]]:
    return _evaluation(_records())


def _check_png(path: Path, min_side: int = 300) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side
    colours = np.unique((image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2])
    assert colours.size > 10  # drawn on (text, curves, anti-aliasing), not a blank canvas


def _row(page: str, row_id: str) -> str:
    match = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', page)
    assert match, f"no row {row_id}"
    return match.group(1)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row)


def test_full_report_has_tables_figures_and_no_links(evaluation, tmp_path):
    metrics, studies = evaluation
    out = write_html_report(metrics, tmp_path / "report.html", title="demo run", studies=studies)
    page = out.read_text()
    for name in FIGURES:
        _check_png(tmp_path / name)
    assert "<title>demo run</title>" in page and "<h1>demo run</h1>" in page
    assert f"<td>{metrics['n_studies']}</td>" in page and f"<td>{metrics['n_images']}</td>" in page
    assert "abnormal when probability &gt; 0.500" in page
    assert "mean of its images" in page
    # the papers' table: TP, FN, FP, TN, F1, kappa and AUC with interval, per part and for all studies
    for part in metrics["per_body_part"]:
        block = metrics["per_body_part"][part]
        cells = _cells(_row(page, f"metrics-{part}"))
        assert cells[:6] == [part, str(block["n"]), str(block["tp"]), str(block["fn"]), str(block["fp"]), str(block["tn"])]
        assert cells[6] == f"{block['f1']:.3f}"
        assert cells[7] == f"{block['kappa']:.3f} [{block['ci95']['kappa'][0]:.3f}, {block['ci95']['kappa'][1]:.3f}]"
        assert cells[8] == f"{block['auc']:.3f} [{block['ci95']['auc'][0]:.3f}, {block['ci95']['auc'][1]:.3f}]"
    assert _cells(_row(page, "metrics-ALL_studies"))[2] == str(metrics["study"]["tp"])
    # three embedded figures that decode to the PNGs written beside the page
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3
    for uri in uris:
        assert Image.open(io.BytesIO(base64.b64decode(uri))).size[0] > 300
    assert "http://" not in page and "https://" not in page
    assert "No sample heatmaps" in page


def test_operating_points_are_named_with_thresholds_and_match_sensitivity_specificity(evaluation, tmp_path):
    metrics, studies = evaluation
    page = write_html_report(metrics, tmp_path / "report.html", studies=studies).read_text()
    y = [s["label"] for s in studies]
    p = [s["probability"] for s in studies]
    thresholds = operating_points(y, p)
    assert len(set(round(t, 3) for t in thresholds.values())) > 1  # distinct points, so a mix-up would show
    for name, t in thresholds.items():
        assert re.search(rf'data-point="{name}">.*?t = {t:.3f}</th>', page), name
    part = "XR_WRIST"
    group = [s for s in studies if s["body_part"] == part]
    row = _row(page, f"op-{part}")
    for name in OPERATING_POINTS:
        sens, spec = sensitivity_specificity([s["label"] for s in group], [s["probability"] for s in group], thresholds[name])
        assert f'data-point="{name}" data-kind="sensitivity">{sens:.3f}</td>' in row
        assert f'data-point="{name}" data-kind="specificity">{spec:.3f}</td>' in row
    assert f'<b id="brier">{brier_score(studies):.3f}</b>' in page


def test_body_part_with_one_class_gets_a_dash_not_a_crash(tmp_path):
    records = _records(70, seed=3) + [
        {"study": f"XR_HUMERUS/only_normal{i}", "body_part": "XR_HUMERUS", "label": 0, "probability": 0.1 * i}
        for i in range(1, 4)
    ]
    records = [r for r in records if r["body_part"] != "XR_HUMERUS" or "only_normal" in r["study"]]
    metrics, studies = _evaluation(records)
    page = write_html_report(metrics, tmp_path / "report.html", studies=studies).read_text()
    row = _row(page, "op-XR_HUMERUS")
    assert 'data-kind="sensitivity">—</td>' in row
    assert 'data-kind="specificity">—</td>' not in row
    assert "One class only, so no curve for: XR_HUMERUS." in page
    for name in FIGURES:
        _check_png(tmp_path / name)


def test_heatmaps_are_embedded_with_captions_up_to_the_limit(evaluation, tmp_path):
    metrics, studies = evaluation
    rng = np.random.default_rng(1)
    paths = []
    for i in range(MAX_HEATMAPS + 2):
        path = tmp_path / "heatmaps" / f"map{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    heatmaps = [("wrist study 7 <abnormal>", paths[0])] + paths[1:]
    page = write_html_report(metrics, tmp_path / "report.html", studies=studies, heatmaps=heatmaps).read_text()
    figures = re.findall(r'<figure class="heatmap"><img alt="[^"]*" src="data:image/png;base64,([^"]+)">'
                         r"<figcaption>(.*?)</figcaption>", page)
    assert len(figures) == MAX_HEATMAPS
    assert figures[0][1] == "wrist study 7 &lt;abnormal&gt;"
    assert figures[1][1] == "map1"
    assert base64.b64decode(figures[0][0]) == paths[0].read_bytes()
    assert "2 more heatmaps not shown" in page
    assert "No sample heatmaps" not in page
    assert len(re.findall(r"data:image/png;base64,", page)) == 3 + MAX_HEATMAPS


def test_predictions_json_beside_the_page_is_found(evaluation, tmp_path):
    metrics, studies = evaluation
    (tmp_path / "predictions.json").write_text(json.dumps({"images": [], "studies": studies}))
    page = write_html_report(metrics, tmp_path / "report.html", title="cli call").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 3
    assert 'id="op-XR_WRIST"' in page
    for name in FIGURES:
        assert (tmp_path / name).is_file()


def test_without_predictions_the_page_has_tables_and_a_note(evaluation, tmp_path):
    metrics, _ = evaluation
    page = write_html_report(metrics, tmp_path / "report.html").read_text()
    assert 'id="metrics-XR_WRIST"' in page
    assert "no <code>predictions.json</code>" in page
    assert "data:image/png" not in page
    assert not (tmp_path / "roc.png").exists()


def test_all_normal_studies_give_notes_not_exceptions(tmp_path):
    records = [dict(r, label=0) for r in _records(30, seed=2)]
    metrics, studies = _evaluation(records)
    page = write_html_report(metrics, tmp_path / "report.html", studies=studies).read_text()
    assert "No operating points" in page
    assert f"all {len(studies)} studies are normal" in page
    assert "—" in _cells(_row(page, "metrics-ALL_studies"))[8]  # AUC undefined
    assert len(re.findall(r"data:image/png;base64,", page)) == 3
    for name in FIGURES:
        _check_png(tmp_path / name)


def test_single_study_and_empty_input_draw_figures(tmp_path):
    single = [{"study": "s", "body_part": "XR_HAND", "label": 1, "probability": 0.7, "n_images": 1}]
    for studies, folder in ((single, "single"), ([], "empty")):
        for draw, name in ((roc_figure, "roc.png"), (pr_figure, "pr.png"), (calibration_figure, "calibration.png")):
            path = draw(studies, tmp_path / folder / name)
            assert path == tmp_path / folder / name
            _check_png(path)


def test_figures_leave_out_non_finite_probabilities(evaluation, tmp_path):
    _, studies = evaluation
    broken = studies + [{"study": "nan", "body_part": "XR_HAND", "label": 1, "probability": float("nan"), "n_images": 1}]
    assert brier_score(broken) == pytest.approx(brier_score(studies))
    page = write_html_report({"study": {"threshold": 0.5}, "per_body_part": {}, "image": {}},
                             tmp_path / "report.html", studies=broken).read_text()
    assert "1 study without a finite probability" in page
    _check_png(tmp_path / "roc.png")


def test_text_table_is_unchanged_by_the_new_page(evaluation):
    metrics, _ = evaluation
    lines = format_metrics_table(metrics).splitlines()
    assert lines[0].split()[:3] == ["level", "n", "auc"]
    assert len(lines) == 1 + len(metrics["per_body_part"]) + 2


def test_view_fusion_and_zoom_sections_sit_beside_the_metrics(evaluation, tmp_path):
    from mura_monai.multiview import compare_view_fusions

    metrics, studies = evaluation
    records = _records()
    fusion = compare_view_fusions(records, None, None, n_bootstrap=20)
    (tmp_path / "view_fusion.json").write_text(json.dumps(fusion))
    zoomed = dict(metrics, without_zoom={"study": fusion["methods"]["max"], "image": metrics["image"]},
                  zoom={"threshold": 0.7, "combine": "mean", "mean_box_fraction": 0.31})
    page = write_html_report(zoomed, tmp_path / "report.html", studies=studies).read_text()
    assert "Fusing a study's views" in page and "Zoom to attention" in page
    mean_row = next(r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", page) if "image averaging" in r)
    assert f"{fusion['methods']['mean']['auc']:.3f}" in mean_row
    assert "0.310 of the radiograph" in page
    assert "(out of fold)" in page


def test_ensemble_section_shows_the_selection_beside_the_members(evaluation, tmp_path):
    """metrics.json of an ensemble fitted with ``combine: auto``: every candidate's out-of-fold
    AUC, the rule and the choice under the members' table."""
    metrics, studies = evaluation
    candidates = [
        {"name": "densenet169_wbce", "members": ["densenet169_wbce"], "combine": "mean", "calibration": "none",
         "oof_study_auc": 0.726},
        {"name": "resnet50", "members": ["resnet50"], "combine": "mean", "calibration": "none", "oof_study_auc": 0.52},
        {"name": "mean(densenet169_wbce+resnet50)", "members": ["densenet169_wbce", "resnet50"], "combine": "mean",
         "calibration": "platt", "oof_study_auc": 0.692},
    ]
    selection = {"rule": "highest out-of-fold study AUC", "tolerance": 0.005, "candidates": candidates,
                 "chosen": "densenet169_wbce", "reason": "densenet169_wbce has the highest out-of-fold study AUC (0.726)",
                 "folds": {"n_folds": 5, "seed": 0, "groups": "patient"}}
    doc = dict(metrics, members={"densenet169_wbce": {"study": metrics["study"]}, "resnet50": {"study": metrics["study"]}},
               ensemble={"combine": "mean", "calibration": "none", "members_used": ["densenet169_wbce"],
                         "selection": selection},
               cross_fitted=True)
    page = write_html_report(doc, tmp_path / "report.html", studies=studies).read_text()
    assert "How the combination was chosen" in page and '<b id="chosen">densenet169_wbce</b>' in page
    assert "mean of densenet169_wbce, none calibration" in page
    row = _row(page, "selection-densenet169_wbce")
    assert "0.726" in row and "member alone" in row and "✔" in row
    assert "0.692" in _row(page, "selection-mean(densenet169_wbce+resnet50)")
    assert "✔" not in _row(page, "selection-resnet50")
    plain = dict(doc, ensemble={"combine": "mean", "calibration": "platt"})
    assert "How the combination was chosen" not in write_html_report(plain, tmp_path / "plain.html", studies=studies).read_text()
