"""How far the reviewers agreed with the model: counts and Cohen's kappa, overall and per body part.

The reviewer's final label is taken as the truth, so ``tp``/``fp``/``fn``/``tn`` read as the
model's hits and misses against its readers; kappa is chance-corrected agreement (undefined,
left empty, when both sides used one class only). ``unattributed`` counts the final labels an API
client saved without naming a person (MONAI Label's client and plugins): they count as readers'
labels, and the table says how many of them nobody vouched for.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["COLUMNS", "agreement_rows", "write_agreement"]

COLUMNS = ("body_part", "studies", "agree", "agreement", "kappa", "tp", "fp", "fn", "tn", "accepted", "overridden",
           "unattributed")


def _row(part: str, pairs: Sequence[tuple[bool, bool]], unattributed: int = 0) -> dict:
    from sklearn.metrics import cohen_kappa_score

    model = [m for m, _ in pairs]
    reviewer = [r for _, r in pairs]
    agree = sum(m == r for m, r in pairs)
    kappa = float("nan")
    if len(set(model) | set(reviewer)) > 1:
        kappa = float(cohen_kappa_score(reviewer, model, labels=[False, True]))
    return {
        "body_part": part, "studies": len(pairs), "agree": agree,
        "agreement": agree / len(pairs) if pairs else float("nan"), "kappa": kappa,
        "tp": sum(m and r for m, r in pairs), "fp": sum(m and not r for m, r in pairs),
        "fn": sum(r and not m for m, r in pairs), "tn": sum(not m and not r for m, r in pairs),
        "accepted": agree, "overridden": len(pairs) - agree, "unattributed": unattributed,
    }


def agreement_rows(studies: Sequence[dict]) -> list[dict]:
    """``studies``: ``{"body_part", "model_abnormal", "reviewer_abnormal"}`` each (and
    ``"unattributed"`` where the final label names nobody); one row per body part, then ``ALL``."""
    by_part: dict[str, list[tuple[bool, bool]]] = {}
    nobody: dict[str, int] = {}
    for study in studies:
        by_part.setdefault(study["body_part"], []).append((bool(study["model_abnormal"]), bool(study["reviewer_abnormal"])))
        nobody[study["body_part"]] = nobody.get(study["body_part"], 0) + bool(study.get("unattributed"))
    rows = [_row(part, pairs, nobody[part]) for part, pairs in sorted(by_part.items())]
    rows.append(_row("ALL", [pair for pairs in by_part.values() for pair in pairs], sum(nobody.values())))
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def write_agreement(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """``agreement.csv`` (for scripts) and ``agreement.md`` (for people)."""
    csv_path, md_path = out_dir / "agreement.csv", out_dir / "agreement.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([[_fmt(row[c]) for c in COLUMNS] for row in rows])
    lines = ["# Model against reviewers", "",
             "The reviewer's final label is the truth; kappa is Cohen's (empty where only one class occurs); "
             "unattributed: final labels an API client saved without naming a person.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row[c]) or "–" for c in COLUMNS) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
