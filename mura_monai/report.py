"""Tables in the seeds' formats: plain text for the terminal, and a one-page offline HTML report."""
from __future__ import annotations

import html
import math
from pathlib import Path

__all__ = ["format_metrics_table", "format_seed001_table", "format_value", "format_with_ci", "metrics_table_rows", "write_html_report"]

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
        rows.append([name] + [format_with_ci(block, c) if c in ("auc", "kappa") else format_value(block.get(c, "")) for c in _COLUMNS])
    return rows


def format_metrics_table(metrics: dict) -> str:
    """The per-body-part table as aligned text."""
    rows = metrics_table_rows(metrics)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def write_html_report(metrics: dict, path: str | Path, title: str = "mura-monai evaluation") -> Path:
    """One self-contained HTML page with the per-body-part table (opens offline)."""
    rows = metrics_table_rows(metrics)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>{metrics['n_studies']} studies, {metrics['n_images']} images; study probability = {html.escape(metrics.get('aggregation', 'mean'))} of its images;
abnormal when probability &gt; {metrics['study']['threshold']:.3f}. AUC and &kappa; with bootstrap 95% intervals.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


_SEED001_COLUMNS = ("tp", "fn", "fp", "tn", "accuracy", "precision", "sensitivity", "f1")


def format_seed001_table(metrics: dict) -> str:
    """Seed 001's result table (Markdown): per body part TP, FN, FP, TN, accuracy, precision,
    sensitivity, F1 at study level, then the router's accuracy, model sizes and training time."""
    lines = ["| Body part | " + " | ".join(c.upper() if len(c) == 2 else c.capitalize() for c in _SEED001_COLUMNS) + " |",
             "|---" * (len(_SEED001_COLUMNS) + 1) + "|"]
    blocks = list(metrics.get("per_body_part", {}).items()) + [("Average / all studies", metrics.get("study", {}))]
    for name, block in blocks:
        lines.append(f"| {name} | " + " | ".join(format_value(block.get(c, float("nan"))) for c in _SEED001_COLUMNS) + " |")
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
