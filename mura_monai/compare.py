"""One table of several evaluated bundles, so the papers' comparisons can be redone on any MURA root.

``mura-monai evaluate`` (or a bundle's ``evaluating`` workflow) leaves a ``metrics.json`` per
bundle; this module reads several of them and writes ``comparison.md`` (an overall table with
training cost, and a per-body-part table in the papers' layout) and ``comparison.csv`` (long
format: one row per bundle and level, plain numbers) for further analysis.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from mura_monai.constants import BODY_PARTS
from mura_monai.report import format_value, format_with_ci

__all__ = [
    "CSV_COLUMNS",
    "body_part_table_rows",
    "comparison_rows",
    "format_comparison",
    "human_count",
    "human_duration",
    "load_evaluation",
    "markdown_table",
    "part_order",
    "overall_table_rows",
    "write_comparison",
]

METRICS_FILE = "metrics.json"
_SOURCE = "_source"  # where load_evaluation read a document (not part of metrics.json)
_MISSING = "—"

CSV_COLUMNS = (
    "bundle", "level", "n", "auc", "auc_lo", "auc_hi", "kappa", "kappa_lo", "kappa_hi",
    "accuracy", "sensitivity", "specificity", "precision", "f1", "tp", "fp", "tn", "fn", "threshold",
    "train_time_s", "epochs_completed", "n_parameters", "model_size_mb",
)
_BLOCK_COLUMNS = ("n", "auc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1",
                  "tp", "fp", "tn", "fn", "threshold")
_TRAINING_COLUMNS = ("train_time_s", "epochs_completed", "n_parameters", "model_size_mb")
_OVERALL_HEADER = ("bundle", "n studies", "study AUC [95% CI]", "study κ [95% CI]", "image AUC", "accuracy",
                   "sensitivity", "specificity", "F1", "epochs", "train time", "parameters", "model size MB")


def load_evaluation(path: str | Path) -> dict:
    """The ``metrics.json`` in folder ``path`` (or the file ``path`` itself).

    Raises ``FileNotFoundError`` naming the path when there is none, and ``ValueError`` naming it
    when the file is not a metrics.json written by mura-monai (``study``/``image`` blocks).
    """
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {file}")
    try:
        doc = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not a mura-monai {METRICS_FILE}: {exc}") from exc
    ours = isinstance(doc, dict) and isinstance(doc.get("per_body_part", {}), dict) and all(
        isinstance(doc.get(level), dict) and "auc" in doc[level] for level in ("study", "image")
    )
    if not ours:
        raise ValueError(f"{file} is not a mura-monai {METRICS_FILE}: no study, image and per_body_part metric blocks")
    doc[_SOURCE] = str(file)
    return doc


# ---------------------------------------------------------------- names, order, small formats


def _number(value) -> float:
    """``value`` as a float; NaN when missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _study_auc(doc: dict) -> float:
    return _number(doc["study"].get("auc"))


def _folder_name(doc: dict) -> str:
    source = doc.get(_SOURCE)
    return Path(source).parent.name if source else ""


def _ordered(docs) -> list[tuple[str, dict]]:
    """``(display name, document)`` by study AUC, best first (NaN last); equal bundle names get
    their folder name appended, and a counter if that is not enough."""
    docs = list(docs)
    if not docs:
        raise ValueError("no evaluations to compare")
    names = [str(doc.get("bundle") or _folder_name(doc) or f"bundle {i + 1}") for i, doc in enumerate(docs)]
    shared = {name for name in names if names.count(name) > 1}
    for i, doc in enumerate(docs):
        folder = _folder_name(doc)
        if names[i] in shared and folder and folder != names[i]:
            names[i] = f"{names[i]} ({folder})"
    counters: dict[str, int] = {}
    still_shared = {name for name in names if names.count(name) > 1}
    for i, name in enumerate(list(names)):
        if name in still_shared:
            counters[name] = counters.get(name, 0) + 1
            names[i] = f"{name} #{counters[name]}"
    pairs = list(zip(names, docs))
    pairs.sort(key=lambda pair: _sort_key(_study_auc(pair[1])))
    return pairs


def _sort_key(auc: float) -> tuple[bool, float]:
    return (math.isnan(auc), 0.0 if math.isnan(auc) else -auc)


def _levels(doc: dict) -> list[tuple[str, dict]]:
    return [("study", doc["study"]), ("image", doc["image"]), *doc.get("per_body_part", {}).items()]


def part_order(docs) -> list[str]:
    """The body parts the metrics documents hold, MURA's seven in their usual order, any other after them."""
    parts = {part for doc in docs for part in doc.get("per_body_part", {})}
    return sorted(parts, key=lambda p: (p not in BODY_PARTS, BODY_PARTS.index(p) if p in BODY_PARTS else 0, p))


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    return format_value(value)


def human_duration(seconds) -> str:
    """``"42 s"``, ``"4 min 12 s"``, ``"2 h 05 min"``; ``"—"`` when unknown."""
    seconds = _number(seconds)
    if math.isnan(seconds):
        return _MISSING
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def human_count(count) -> str:
    """``"12.5 M"``, ``"840.2 k"``, ``"512"``; ``"—"`` when unknown."""
    count = _number(count)
    if math.isnan(count):
        return _MISSING
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    if count >= 1e3:
        return f"{count / 1e3:.1f} k"
    return f"{count:.0f}"


def _epochs(training: dict) -> str:
    done = training.get("epochs_completed")
    if done is None:
        return _MISSING
    planned = training.get("max_epochs")
    return f"{done}/{planned}" if planned and planned != done else str(done)


def _part_cell(block: dict | None) -> str:
    if not block:
        return _MISSING
    kappa = _number(block.get("kappa"))
    return f"AUC {_text(_number(block.get('auc')))} · κ {_MISSING if math.isnan(kappa) else f'{kappa:.2f}'}"


# ---------------------------------------------------------------- rows


def comparison_rows(docs) -> list[dict]:
    """The long-format rows of ``comparison.csv``: one dict per (bundle, level), level in
    ``study``, ``image``, ``XR_*``; keys ``CSV_COLUMNS``; numbers as numbers, ``None`` when unknown.
    Bundles by study AUC, best first."""
    rows = []
    for name, doc in _ordered(docs):
        training = doc.get("training") or {}
        for level, block in _levels(doc):
            row: dict = {"bundle": name, "level": level}
            for column in _BLOCK_COLUMNS:
                row[column] = block.get(column)
            for metric in ("auc", "kappa"):
                lo, hi = (block.get("ci95") or {}).get(metric) or (None, None)
                row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
            for column in _TRAINING_COLUMNS:
                row[column] = training.get(column)
            rows.append({column: row[column] for column in CSV_COLUMNS})
    return rows


def overall_table_rows(docs) -> list[list[str]]:
    """Header, then one row per bundle (study-level accuracy, sensitivity, specificity, F1)."""
    rows = [list(_OVERALL_HEADER)]
    for name, doc in _ordered(docs):
        study, training = doc["study"], doc.get("training") or {}
        rows.append([
            name,
            _text(doc.get("n_studies", study.get("n"))),
            format_with_ci(study, "auc"),
            format_with_ci(study, "kappa"),
            _text(_number(doc["image"].get("auc"))),
            *(_text(_number(study.get(metric))) for metric in ("accuracy", "sensitivity", "specificity", "f1")),
            _epochs(training),
            human_duration(training.get("train_time_s")),
            human_count(training.get("n_parameters")),
            _MISSING if math.isnan(_number(training.get("model_size_mb"))) else f"{_number(training['model_size_mb']):.1f}",
        ])
    return rows


def body_part_table_rows(docs) -> list[list[str]]:
    """Header (body part, then the bundles), one row per body part, then all studies; study-level
    ``AUC · κ`` in each cell."""
    ordered = _ordered(docs)
    rows = [["body part", *(name for name, _ in ordered)]]
    for part in part_order([doc for _, doc in ordered]):
        rows.append([part, *(_part_cell(doc.get("per_body_part", {}).get(part)) for _, doc in ordered)])
    rows.append(["all studies", *(_part_cell(doc["study"]) for _, doc in ordered)])
    return rows


def _notes(docs) -> list[str]:
    """How each bundle turned images into a study decision, and a warning when the valid sets differ."""
    ordered = _ordered(docs)
    rules = "; ".join(
        f"{name}: {doc.get('aggregation', 'mean')}, > {_text(_number(doc['study'].get('threshold')))}"
        for name, doc in ordered
    )
    notes = [f"Study probability = aggregation of its images' probabilities, abnormal above the threshold ({rules})."]
    sizes = {(doc.get("n_studies"), doc.get("n_images")) for _, doc in ordered}
    if len(sizes) > 1:
        detail = ", ".join(f"{name} {doc.get('n_studies')} studies / {doc.get('n_images')} images" for name, doc in ordered)
        notes.append(f"Warning: the bundles were evaluated on different valid sets ({detail}): "
                     "this comparison is not like for like.")
    return notes


# ---------------------------------------------------------------- output


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def markdown_table(rows: list[list[str]]) -> str:
    """Rows (header first) as a Markdown table; a ``|`` inside a cell is escaped so it cannot split the cell."""
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *(line(row) for row in rows[1:])])


def format_comparison(docs) -> str:
    """Both tables as aligned text for the terminal, with the notes."""
    docs = list(docs)
    return "\n\n".join([_aligned(overall_table_rows(docs)), _aligned(body_part_table_rows(docs)), "\n".join(_notes(docs))])


def write_comparison(docs, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.csv`` into ``output_dir``; returns both paths."""
    docs = list(docs)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {output_dir} is a file, not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    notes = _notes(docs)
    sources = "\n".join(f"- {name}: `{doc.get(_SOURCE, 'in memory')}`" for name, doc in _ordered(docs))
    markdown = "\n\n".join([
        "# Bundle comparison",
        ("Study-level accuracy, sensitivity, specificity and F1; AUC and κ with bootstrap 95% intervals. "
         "Bundles by study AUC, best first."),
        markdown_table(overall_table_rows(docs)),
        "## Per body part (study level)",
        markdown_table(body_part_table_rows(docs)),
        *(f"> **{note}**" if note.startswith("Warning") else note for note in notes),
        "Evaluations:\n" + sources,
    ]) + "\n"
    md_path = output_dir / "comparison.md"
    md_path.write_text(markdown)
    csv_path = output_dir / "comparison.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in comparison_rows(docs):
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return md_path, csv_path
