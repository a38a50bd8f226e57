"""Tables in the papers' formats: plain text for the terminal, and a one-page offline HTML report.

The HTML page is what a reader opens after ``mura-monai evaluate``: it must open from a copied
folder or an air-gapped machine, so it carries its images as data URIs and refers to nothing
online. Its figures come from :mod:`mura_monai.report_figures`.

References:

* Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in
  Musculoskeletal Radiographs": the table of :func:`format_patel_et_al_table`.
* Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence through
  detection of musculoskeletal X-ray abnormalities using artificial neural networks in medical image
  data": the precision = recall operating point.
"""
from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from mura_monai.operating_points import OperatingPoint, operating_points, sensitivity_specificity

__all__ = [
    "MAX_HEATMAPS",
    "format_metrics_table",
    "format_patel_et_al_table",
    "format_value",
    "format_with_ci",
    "load_studies",
    "metrics_table_rows",
    "operating_point_table",
    "report_table_rows",
    "write_html_report",
]

_COLUMNS = ("n", "auc", "kappa", "accuracy", "sensitivity", "specificity", "f1", "tp", "fn", "fp", "tn")


def format_value(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_with_ci(block: dict, name: str) -> str:
    text = format_value(block.get(name, float("nan")))
    ci = block.get("ci95", {}).get(name)
    if ci and not any(math.isnan(v) for v in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def metrics_table_rows(metrics: dict) -> list[list[str]]:
    """Rows (header first): one per body part, then the study-level and image-level totals."""
    rows = [["level", *_COLUMNS]]
    blocks = [(part, block) for part, block in metrics["per_body_part"].items()]
    blocks += [("ALL studies", metrics["study"]), ("ALL images", metrics["image"])]
    for name, block in blocks:
        rows.append([name] + [format_with_ci(block, c) if c in ("auc", "kappa") else format_value(block.get(c, ""))
                              for c in _COLUMNS])
    return rows


def format_metrics_table(metrics: dict) -> str:
    """The per-body-part table as aligned text."""
    rows = metrics_table_rows(metrics)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cell(value: str, cls: str = "", attrs: str = "") -> str:
    class_attr = f' class="{cls}"' if cls else ""
    return f"<td{class_attr}{attrs}>{html.escape(value)}</td>"


_REPORT_COLUMNS = (("n", "n"), ("tp", "TP"), ("fn", "FN"), ("fp", "FP"), ("tn", "TN"), ("f1", "F1"),
                   ("kappa", "κ [95% CI]"), ("auc", "AUC [95% CI]"), ("accuracy", "accuracy"),
                   ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def report_table_rows(metrics: dict) -> list[list[str]]:
    """The papers' table in their column order (counts, F1, κ and AUC with intervals), header first,
    one row per body part, then all studies and all images."""
    rows = [["level", *(label for _, label in _REPORT_COLUMNS)]]
    blocks = list(metrics.get("per_body_part", {}).items())
    blocks += [("ALL studies", metrics.get("study", {})), ("ALL images", metrics.get("image", {}))]
    for name, block in blocks:
        rows.append([name] + [format_with_ci(block, c) if c in ("auc", "kappa") else format_value(block.get(c, float("nan")))
                              for c, _ in _REPORT_COLUMNS])
    return rows


def load_studies(directory: str | Path) -> list[dict] | None:
    """The study records of ``predictions.json`` in ``directory`` (written beside ``metrics.json``
    by ``MetricsReportWriter``), or None when there is none to read."""
    path = Path(directory) / "predictions.json"
    try:
        studies = json.loads(path.read_text()).get("studies")
    except (OSError, ValueError, AttributeError):
        return None
    return studies if isinstance(studies, list) else None


def operating_point_table(studies: list[dict], parts: list[str] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Thresholds chosen once on all studies, then sensitivity/specificity per body part at them.

    One threshold per operating point (not one per part) because a deployed model has one
    threshold; the per-part figures show where it serves a body part badly. Returns
    ``(thresholds, rows)``, each row ``{"name", "n", "n_abnormal", "values": {point: (sens, spec)}}``
    with NaN where a part lacks a class; raises ValueError when all studies share one class.
    """
    y = np.asarray([int(s["label"]) for s in studies], dtype=int)
    p = np.asarray([float(s["probability"]) for s in studies], dtype=float)
    keep = np.isfinite(p)
    y, p = y[keep], p[keep]
    thresholds = operating_points(y, p)
    kept = [s for s, k in zip(studies, keep) if k]
    names = list(parts or [])
    names += sorted({s.get("body_part", "UNKNOWN") for s in kept} - set(names))
    groups = [(name, [s for s in kept if s.get("body_part", "UNKNOWN") == name]) for name in names]
    groups.append(("ALL studies", kept))
    rows = []
    for name, group in groups:
        gy = [int(s["label"]) for s in group]
        gp = [float(s["probability"]) for s in group]
        rows.append({"name": name, "n": len(group), "n_abnormal": int(sum(gy)),
                     "values": {point: sensitivity_specificity(gy, gp, t) for point, t in thresholds.items()}})
    return thresholds, rows


def _table(rows: list[list[str]], id_prefix: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(f'<tr id="{id_prefix}-{html.escape(row[0].replace(" ", "_"))}">' + "".join(_cell(c) for c in row) + "</tr>"
                   for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _operating_point_section(studies: list[dict] | None, parts: list[str]) -> tuple[str, dict[str, float]]:
    from mura_monai.report_figures import point_label  # matplotlib: only loaded when a page is written

    if studies is None:
        return ('<p class="note">No per-study predictions were given and no <code>predictions.json</code> lies beside '
                "this report: operating points and figures need them.</p>"), {}
    try:
        thresholds, rows = operating_point_table(studies, parts)
    except ValueError as err:
        return f'<p class="note">No operating points: {html.escape(str(err))}.</p>', {}
    head1 = "<th rowspan=2>level</th><th rowspan=2>studies</th><th rowspan=2>abnormal</th>" + "".join(
        f'<th colspan=2 data-point="{name}">{html.escape(point_label(name))} <code>{name}</code><br>t = {t:.3f}</th>'
        for name, t in thresholds.items())
    head2 = "<th>sens.</th><th>spec.</th>" * len(thresholds)
    body = ""
    for row in rows:
        cells = _cell(row["name"]) + _cell(str(row["n"])) + _cell(str(row["n_abnormal"]))
        for name, (sens, spec) in row["values"].items():
            cells += _cell(format_value(sens), "sep", f' data-point="{name}" data-kind="sensitivity"')
            cells += _cell(format_value(spec), "", f' data-point="{name}" data-kind="specificity"')
        body += f'<tr id="op-{html.escape(row["name"].replace(" ", "_"))}">{cells}</tr>'
    explain = "".join(f"<li><b>{html.escape(point_label(n))}</b> (<code>{n}</code>): {html.escape(_POINT_HELP[n])} "
                      f"Threshold {t:.3f}.</li>" for n, t in thresholds.items() if n in _POINT_HELP)
    text = (f"<p>Thresholds chosen once on all {rows[-1]['n']} studies (abnormal when probability &gt; t), then applied "
            "to each body part. &ldquo;—&rdquo; where a body part has no abnormal (sensitivity) or no normal "
            f"(specificity) study.</p><ul>{explain}</ul>")
    return text + f"<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead><tbody>{body}</tbody></table>", thresholds


_POINT_HELP = {point.value: point.description for point in OperatingPoint}


def _data_uri(path: Path) -> str:
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures_section(studies: list[dict] | None, directory: Path, thresholds: dict[str, float], threshold: float) -> str:
    from mura_monai.report_figures import brier_score, calibration_figure, degenerate_notes, pr_figure, roc_figure

    if studies is None:
        return '<p class="note">No per-study predictions: no figures.</p>'
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in degenerate_notes(studies))
    points = dict(thresholds) | {"threshold": threshold}
    roc = roc_figure(studies, directory / "roc.png", points)
    pr = pr_figure(studies, directory / "pr.png", points)
    cal = calibration_figure(studies, directory / "calibration.png")
    brier = brier_score(studies)
    parts = [
        ("ROC curves", roc, "All studies (thick black) and each body part; markers: operating points on all studies."),
        ("Precision-recall curves", pr, "AP = average precision; the dotted line is the abnormal fraction."),
        ("Calibration", cal, f"Brier score {format_value(brier)} (0 is perfect; 0.25 is a constant 0.5). Top: observed "
                             "abnormal fraction per probability bin; bottom: how many studies fall in each bin."),
    ]
    figs = "".join(f'<figure><img alt="{html.escape(name)}" src="{_data_uri(p)}"><figcaption><b>{html.escape(name)}</b>. '
                   f"{html.escape(caption)} (also <code>{p.name}</code>)</figcaption></figure>" for name, p, caption in parts)
    return notes + f'<p>Brier score (all studies): <b id="brier">{format_value(brier)}</b></p><div class="figs">{figs}</div>'


MAX_HEATMAPS = 8


def _heatmap_section(heatmaps) -> str:
    if not heatmaps:
        return '<p class="note">No sample heatmaps were given for this report.</p>'
    items = [(h[0], Path(h[1])) if isinstance(h, (tuple, list)) else (Path(h).stem, Path(h)) for h in heatmaps]
    shown, out = items[:MAX_HEATMAPS], ""
    for caption, path in shown:
        if path.is_file():
            out += (f'<figure class="heatmap"><img alt="{html.escape(str(caption))}" src="{_data_uri(path)}">'
                    f"<figcaption>{html.escape(str(caption))}</figcaption></figure>")
        else:
            out += f'<p class="note">Heatmap not found: {html.escape(str(path))}</p>'
    more = f'<p class="note">{len(items) - len(shown)} more heatmaps not shown.</p>' if len(items) > len(shown) else ""
    return f'<div class="figs">{out}</div>{more}'


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h2{border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0}td,th{border:1px solid #aaa;padding:3px 7px;text-align:right}
th{background:#f0f0f0;text-align:center}td:first-child{text-align:left;font-weight:600}
tbody tr[id$=ALL_studies],tbody tr[id$=ALL_images]{background:#f6f6f6}td.sep{border-left:2px solid #666}
.note{background:#fff6d5;border-left:4px solid #c9a227;padding:4px 8px}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}figure{margin:0;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:0.85em;max-width:760px;color:#444}
figure.heatmap img{width:240px}figure.heatmap figcaption{max-width:240px;word-wrap:break-word}
.meta td{border:none;text-align:left;padding:1px 10px 1px 0}.meta td:first-child{color:#555;font-weight:normal}"""


def write_html_report(
    metrics: dict,
    path: str | Path,
    title: str = "mura-monai evaluation",
    studies: list[dict] | None = None,
    heatmaps: list | None = None,
) -> Path:
    """One self-contained HTML page (opens offline; images are data URIs) with the papers' tables,
    operating points, ROC/PR/calibration figures and sample heatmaps.

    ``studies`` are study-level records (``body_part``, ``label``, ``probability``); when None
    they are read from ``predictions.json`` beside ``path`` (``MetricsReportWriter`` writes it),
    then from ``metrics["studies"]``, so ``mura-monai evaluate`` needs no extra argument. The
    figures are also written as ``roc.png``, ``pr.png`` and ``calibration.png`` beside the page.
    ``heatmaps`` are image paths or ``(caption, path)`` pairs; the first ``MAX_HEATMAPS`` are shown.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if studies is None:
        studies = load_studies(path.parent)
    if studies is None and isinstance(metrics.get("studies"), list):
        studies = metrics["studies"]
    threshold = float(metrics.get("study", {}).get("threshold", 0.5))
    parts = list(metrics.get("per_body_part", {}))
    op_html, thresholds = _operating_point_section(studies, parts)
    meta = [
        ("studies", str(metrics.get("n_studies", len(studies) if studies is not None else "?"))),
        ("images", str(metrics.get("n_images", "?"))),
        ("aggregation", f"study probability = {metrics.get('aggregation', 'mean')} of its images' probabilities"),
        ("threshold used", f"abnormal when probability > {threshold:.3f}"),
        ("generated", datetime.now().strftime("%Y-%m-%d %H:%M")),
    ]
    meta_html = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in meta)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>
<table class="meta">{meta_html}</table>
<h2>Metrics per body part</h2>
<p>Study level (MURA's unit),
at threshold {threshold:.3f}; AUC and &kappa; with bootstrap 95% intervals. The last row is image level.</p>
{_table(report_table_rows(metrics), "metrics")}
{_ensemble_section(metrics)}{_zoom_section(metrics)}{_view_fusion_section(path.parent)}<h2>Operating points</h2>
{op_html}
<h2>Figures</h2>
{_figures_section(studies, path.parent, thresholds, threshold)}
<h2>Sample heatmaps</h2>
{_heatmap_section(heatmaps)}
</body></html>"""
    path.write_text(page, encoding="utf-8")
    return path


def _ensemble_section(metrics: dict) -> str:
    """For an ensemble: it against each member on the same studies, and how it was fitted."""
    members = metrics.get("members")
    if not members:
        return ""
    rows = [["model", "study AUC [95% CI]", "study κ [95% CI]", "threshold"]]
    rows.append(["ensemble", format_with_ci(metrics["study"], "auc"), format_with_ci(metrics["study"], "kappa"),
                 format_value(metrics["study"].get("threshold", float("nan")))])
    for name, block in members.items():
        rows.append([name, format_with_ci(block["study"], "auc"), format_with_ci(block["study"], "kappa"),
                     format_value(block["study"].get("threshold", float("nan")))])
    ensemble = metrics.get("ensemble", {})
    used = ensemble.get("members_used")
    of = f"of {', '.join(used)}" if used and len(used) < len(members) else "of the members"
    how = (f"{ensemble.get('combine', '?')} {of}, {ensemble.get('calibration', '?')} calibration, "
           f"operating point {metrics.get('operating_point', '?')}")
    fold = ("The ensemble's probabilities are out of fold: each study scored by a combination fitted on the other "
            "studies, since it was fitted on this split." if metrics.get("cross_fitted") else
            "Its fit does not change how studies rank, so its AUC is not flattered by being fitted on this split; "
            "its thresholds were fitted here.")
    parts = ", ".join(sorted(p for p in metrics.get("thresholds", {}) if p != "ALL")) or "none (all studies' threshold used)"
    return (f"<h2>Ensemble and members</h2><p>{html.escape(how)}. {html.escape(fold)} "
            f"Body parts with their own thresholds: {html.escape(parts)}.</p>{_table(rows, 'ensemble')}\n"
            f"{_selection_section(ensemble.get('selection'))}")


def _selection_section(selection: dict | None) -> str:
    """Why the ensemble is what it is (``combine: auto``): every candidate's out-of-fold study
    AUC on the fitting split, the rule and the choice, so a reader can check the choice."""
    if not selection:
        return ""
    rows = [["candidate", "members", "combination", "calibration", "out-of-fold study AUC", "chosen"]]
    for c in selection.get("candidates", []):
        rows.append([c["name"], ", ".join(c["members"]), c["combine"] if len(c["members"]) > 1 else "member alone",
                     c["calibration"], format_value(float(c["oof_study_auc"])), "✔" if c["name"] == selection["chosen"] else ""])
    folds = selection.get("folds", {})
    text = (f"Chosen: <b id=\"chosen\">{html.escape(selection['chosen'])}</b>. {html.escape(selection.get('reason', ''))}. "
            f"Rule: {html.escape(selection.get('rule', ''))} Tolerance {selection.get('tolerance')}; "
            f"{folds.get('n_folds', '?')} folds grouped by {html.escape(str(folds.get('groups', '?')))}.")
    table = _table(rows, "selection") if len(rows) > 1 else ""
    return f"<h3>How the combination was chosen</h3><p>{text}</p>{table}\n"


def _zoom_section(metrics: dict) -> str:
    """With zoom to attention: the same model's figures without the second look, side by side."""
    without = metrics.get("without_zoom")
    if not without:
        return ""
    zoom = metrics.get("zoom", {})
    rows = [["prediction", "study AUC [95% CI]", "study κ [95% CI]", "image AUC"],
            ["with zoom to attention", format_with_ci(metrics["study"], "auc"), format_with_ci(metrics["study"], "kappa"),
             format_value(metrics["image"]["auc"])],
            ["whole radiograph only", format_with_ci(without["study"], "auc"), format_with_ci(without["study"], "kappa"),
             format_value(without["image"]["auc"])]]
    how = (f"Second look on the Grad-CAM region above {zoom.get('threshold', '?')}, combined by "
           f"{zoom.get('combine', '?')}; the crops kept {format_value(zoom.get('mean_box_fraction', float('nan')))} "
           "of the radiograph's area on average.")
    return f"<h2>Zoom to attention</h2><p>{html.escape(how)}</p>{_table(rows, 'zoom')}\n"


def _view_fusion_section(directory: Path) -> str:
    """Every view-fusion rule on the same predictions (``view_fusion.json`` beside the report)."""
    path = directory / "view_fusion.json"
    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    rows = [["view fusion", "study AUC [95% CI]", "study κ [95% CI]", "sensitivity", "specificity"]]
    for method, row in doc["methods"].items():
        name = method + (" (MURA's image averaging)" if method == doc.get("baseline") else "")
        name += " (out of fold)" if row.get("scored") else ""
        rows.append([name, format_with_ci(row, "auc"), format_with_ci(row, "kappa"), format_value(row["sensitivity"]),
                     format_value(row["specificity"])])
    note = ("Late rules combine the views' probabilities; learned fits weights on the study's max, mean and min "
            "logits; early rules pool the views' features before the classifier (trained on single images).")
    note += "".join(f" {method}: not evaluated: {why}." for method, why in doc.get("not_evaluated", {}).items())
    return f"<h2>Fusing a study's views</h2><p>{html.escape(note)}</p>{_table(rows, 'view-fusion')}\n"


_PATEL_ET_AL_COLUMNS = ("tp", "fn", "fp", "tn", "accuracy", "precision", "sensitivity", "f1")


def format_patel_et_al_table(metrics: dict) -> str:
    """Patel et al.'s result table (Markdown): per body part TP, FN, FP, TN, accuracy, precision,
    sensitivity, F1 at study level, then the router's accuracy, model sizes and training time."""
    lines = ["| Body part | " + " | ".join(c.upper() if len(c) == 2 else c.capitalize() for c in _PATEL_ET_AL_COLUMNS) + " |",
             "|---" * (len(_PATEL_ET_AL_COLUMNS) + 1) + "|"]
    blocks = list(metrics.get("per_body_part", {}).items()) + [("Average / all studies", metrics.get("study", {}))]
    for name, block in blocks:
        lines.append(f"| {name} | " + " | ".join(format_value(block.get(c, float("nan"))) for c in _PATEL_ET_AL_COLUMNS) + " |")
    routing = metrics.get("routing", {})
    training = metrics.get("training", {})
    lines.append("")
    if routing:
        lines.append(f"Router (bone detector) accuracy: {format_value(routing.get('router_accuracy', float('nan')))} "
                     f"on {routing.get('n_images', 0)} images.")
    if training:
        models = training.get("models", {})
        sizes = ", ".join(f"{name} {s.get('model_size_mb', 0):.1f} MB" for name, s in models.items())
        lines.append(f"Models: {training.get('n_models', len(models) or 1)}, {training.get('model_size_mb', 0):.1f} MB in all"
                     + (f" ({sizes})" if sizes else "") + ".")
        lines.append(f"Training time: {training.get('train_time_s', 0):.0f} s in all.")
    return "\n".join(lines) + "\n"
