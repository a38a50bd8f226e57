"""An evaluator handler that scores every view-fusion rule on the same evaluation pass.

It listens to the network's classifier layer for the views' features (early fusion) and to the
engine's outputs for their probabilities (late fusion), so the comparison with MURA's image
averaging costs no second pass over the data. See :mod:`mura_monai.multiview`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from mura_monai.backends import scoring_backend
from mura_monai.engines.prediction_buffer import PredictionBuffer
from mura_monai.multiview import EARLY_FUSIONS, VIEW_FUSION_FILE, compare_view_fusions, last_linear

__all__ = ["ViewFusionWriter", "VIEW_FUSION_FILE", "view_fusion_table"]

logger = logging.getLogger(__name__)


def view_fusion_table(doc: dict) -> str:
    """Markdown rows: each fusion rule's study AUC and κ with intervals, image averaging first."""
    def interval(row, key):
        ci = row.get("ci95", {}).get(key)
        return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""

    lines = ["| view fusion | study AUC [95% CI] | κ [95% CI] | sensitivity | specificity |", "|---|---|---|---|---|"]
    for method, row in doc["methods"].items():
        name = method + (" (MURA's image averaging)" if method == doc.get("baseline") else "")
        name += " (out of fold)" if row.get("scored") else ""
        lines.append(f"| {name} | {row['auc']:.3f}{interval(row, 'auc')} | {row['kappa']:.3f}{interval(row, 'kappa')} "
                     f"| {row['sensitivity']:.3f} | {row['specificity']:.3f} |")
    lines += [f"\n{method}: not evaluated: {why}" for method, why in doc.get("not_evaluated", {}).items()]
    return "\n".join(lines) + "\n"


class ViewFusionWriter:
    """Writes ``view_fusion.json`` (every rule's study metrics and the learned rule's weights)
    and ``view_fusion.md`` when an evaluation ends.

    An early rule that could not be scored is named under ``"not_evaluated"`` with the reason
    (e.g. an evaluation on an exported graph, whose classifier input no hook can see), so that a
    missing row never reads as a rule that was left out of the comparison by design.

    Args:
        output_dir: folder for the files.
        network: the evaluated network (its last linear layer's input is the early-fusion feature).
        threshold: probability above which a study is called abnormal.
        n_bootstrap: resamples for the 95% intervals.
    """

    def __init__(self, output_dir: str | Path, network: torch.nn.Module, threshold: float = 0.5,
                 n_bootstrap: int = 200, seed: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.threshold = threshold
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.buffer = PredictionBuffer()
        self.features: list[torch.Tensor] = []
        self.document: dict | None = None

    def attach(self, engine: Engine) -> None:
        try:
            self.head = last_linear(self.network)
        except ValueError:  # no linear classifier (e.g. the SVM head): the late rules only
            self.head = None
        if self.head is not None:
            self.head.register_forward_pre_hook(self._capture)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.buffer.add_from_engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _capture(self, _module, args) -> None:
        if not torch.is_grad_enabled():  # evaluation passes only, not a trainer sharing the network
            self.features.append(args[0].detach().float().cpu())

    def _reset(self, _engine: Engine) -> None:
        self.buffer.reset()
        self.features = []

    def write(self, engine: Engine | None = None) -> dict:
        records = self.buffer.records
        features = torch.cat(self.features) if self.features else None
        skipped = None
        if features is not None and features.shape[0] != len(records):
            skipped = (f"{features.shape[0]} feature rows for {len(records)} images (the classifier layer ran more "
                       "than once per image)")
            features = None
        backend = scoring_backend(engine)
        if features is None and self.head is not None and backend is not None and backend.name != "torch":
            # the exported graph hides the classifier's input, and the hook on the eager one never ran
            skipped = (f"the {backend.name} backend scored the images and only the eager network gives the "
                       "classifier's input features (evaluate with --backend torch for the early rules)")
        doc = compare_view_fusions(records, features, self.head if features is not None else None,
                                   self.threshold, self.n_bootstrap, self.seed)
        if skipped:
            logger.warning("early view fusion not evaluated: %s", skipped)
            doc["not_evaluated"] = {method: skipped for method in EARLY_FUSIONS}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / VIEW_FUSION_FILE).write_text(json.dumps(doc, indent=2, allow_nan=True))
        (self.output_dir / "view_fusion.md").write_text(view_fusion_table(doc))
        best = max(doc["methods"].items(), key=lambda kv: kv[1]["auc"])
        logger.info("view fusion on %d studies: mean AUC %.4f, best %s %.4f; written to %s", doc["n_studies"],
                    doc["methods"]["mean"]["auc"], best[0], best[1]["auc"], self.output_dir / VIEW_FUSION_FILE)
        self.document = doc
        return doc
