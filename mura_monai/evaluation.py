"""Running a bundle's ``evaluating`` workflow from Python (what ``mura-monai evaluate`` does).

The bundle config stays the single description of the model; this only fills in the paths and
the settings recorded at training time, then runs MONAI's ``ConfigWorkflow``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.bundle import ConfigWorkflow

from mura_monai.data.mura import find_mura_root
from mura_monai.model_settings import load_model_settings

__all__ = ["Evaluated", "bundle_configs", "evaluate", "evaluate_bundle", "evaluate_ensemble", "evaluate_zoom"]


def bundle_configs(bundle_dir: str | Path, *names: str) -> list[str]:
    """Paths of ``configs/<name>.json`` in a bundle, each checked to exist."""
    configs = []
    for name in names:
        path = Path(bundle_dir) / "configs" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"bundle config not found: {path}")
        configs.append(str(path))
    return configs


def evaluate_bundle(
    bundle_dir: str | Path,
    dataset_dir: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    models_dir: str | Path | None = None,
    overrides: dict | None = None,
) -> dict:
    """Evaluate the bundle's ``models/model.pt`` on the valid split; returns metrics.json's content.

    ``overrides`` may set ``backend`` and ``onnx_threads``, which a bundle's ``evaluate.json``
    hands to :func:`~mura_monai.backends.evaluation_network`; one whose evaluate.json has no
    ``backend`` key is refused rather than evaluated on eager PyTorch unsaid.
    """
    bundle_dir = Path(bundle_dir).resolve()
    dataset_dir = find_mura_root(dataset_dir)
    configs = bundle_configs(bundle_dir, "train", "evaluate")
    asked = sorted({"backend", "onnx_threads"} & set(overrides or {}))
    if asked and "backend" not in json.loads(Path(configs[1]).read_text()):
        raise ValueError(f"{bundle_dir.name}'s configs/evaluate.json has no backend key: it cannot take "
                         f"{' or '.join(asked)}")
    ckpt_dir = Path(models_dir).resolve() if models_dir else bundle_dir / "models"
    if not (ckpt_dir / "model.pt").is_file():
        raise FileNotFoundError(f"bundle has no trained model: {ckpt_dir / 'model.pt'} (train it first)")
    values = {
        **load_model_settings(ckpt_dir),
        "bundle_root": str(bundle_dir),
        "ckpt_dir": str(ckpt_dir),
        "dataset_dir": str(dataset_dir),
        "output_dir": str(Path(output_dir).resolve()),
        "device": device,
        **(overrides or {}),
    }
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        workflow_type=None,
        run_id="evaluating",
        **values,
    )
    workflow.initialize()
    # resolved (and kept for the run) now: a backend that cannot run is refused before the valid
    # split is read and cached, which takes minutes on MURA itself
    workflow.parser.get_parsed_content("validate#evaluator#network")
    workflow.run()
    workflow.finalize()
    return json.loads((Path(output_dir) / "metrics.json").read_text())


def evaluate_ensemble(predictor, dataset_dir: str | Path, output_dir: str | Path, n_bootstrap: int = 1000,
                      progress: bool = False) -> dict:
    """metrics.json of an ensemble bundle, with each member's figures on the same studies.

    The ensemble's probabilities are out of fold when it was fitted on this split (see
    :meth:`EnsemblePredictor.evaluation_records`); thresholded figures use its all-studies
    threshold at the configured operating point.
    """
    from mura_monai.engines.prediction_buffer import write_evaluation
    from mura_monai.metrics import evaluate_predictions

    records = predictor.evaluation_records(dataset_dir, progress=progress)
    operating_point = predictor.settings["operating_point"]
    threshold, _ = predictor.fitted.threshold("ALL", operating_point)
    aggregation = predictor.fitted.aggregation
    members = {}
    for name in predictor.member_names:
        member_records = [{**r, "probability": r["members"][name]} for r in records]
        member = evaluate_predictions(member_records, predictor.members[predictor.member_names.index(name)].threshold,
                                      aggregation, n_bootstrap)
        members[name] = {"study": member["study"], "n_studies": member["n_studies"]}
    extra = {
        "bundle": predictor.bundle_dir.name,
        "ensemble": {**predictor.describe(), **({"selection": predictor.fitted.selection} if predictor.fitted.selection else {})},
        "operating_point": operating_point,
        "cross_fitted": bool(records and records[0]["cross_fitted"]),
        "members": members,
        "thresholds": predictor.fitted.thresholds,
    }
    return write_evaluation(records, output_dir, threshold, aggregation, n_bootstrap, extra=extra)


def evaluate_zoom(predictor, dataset_dir: str | Path, output_dir: str | Path, n_bootstrap: int = 1000,
                  progress: bool = False) -> dict:
    """metrics.json of a bundle predicting with zoom to attention, beside the same model's figures
    without it (the first look of the same pass) under ``"without_zoom"``: the option's measured effect."""
    from mura_monai.data.mura import mura_datalist
    from mura_monai.engines.prediction_buffer import write_evaluation
    from mura_monai.engines.training_summary import read_training_summary
    from mura_monai.metrics import evaluate_predictions

    if not predictor.zoom:
        raise ValueError("evaluate_zoom needs a predictor built with zoom on")
    datalist = mura_datalist(find_mura_root(dataset_dir), "valid")
    records = predictor.predict_images([Path(d["image"]) for d in datalist], progress=progress)
    for record, item in zip(records, datalist):
        record.update({k: item[k] for k in ("study", "patient", "body_part", "label")})
    threshold, aggregation = predictor.threshold, predictor.loaded.aggregation
    first = evaluate_predictions([{**r, "probability": r["probability_first"]} for r in records], threshold,
                                 aggregation, n_bootstrap)
    extra = {
        "bundle": predictor.bundle_dir.resolve().name,
        "zoom": {"threshold": predictor.zoom_threshold, "combine": predictor.zoom_combine,
                 "mean_box_fraction": float(np.mean([r["zoom_box_fraction"] for r in records]))},
        "without_zoom": {"study": first["study"], "image": first["image"]},
        "training": read_training_summary(predictor.ckpt_dir),
        "backend": predictor.backend_used(),
    }
    return write_evaluation(records, output_dir, threshold, aggregation, n_bootstrap, extra=extra)


@dataclass(frozen=True)
class Evaluated:
    """An evaluation's metrics, and the networks that explain it (``(network, preprocessing,
    weight)`` each, as :func:`~mura_monai.explain.explain_image` takes them) for the report's heatmaps."""

    metrics: dict
    explainers: list


def evaluate(bundle_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path, *, device: str = "auto",
             models_dir: str | Path | None = None, members_models_dir: str | Path | None = None,
             n_bootstrap: int = 1000, zoom: bool = False, progress: bool = False, backend: str | None = None,
             onnx_threads: int | None = None) -> Evaluated:
    """Any bundle of the project on a MURA root's valid split: an ensemble through its predictor,
    a single model through its own ``evaluating`` workflow, or with zoom to attention beside
    itself without it. ``predictions.json`` and ``metrics.json`` land in ``output_dir``.

    ``backend`` and ``onnx_threads`` (None: each bundle's config) say what scores the images
    (:mod:`mura_monai.backends`), so that an export is evaluated as it is served.
    """
    from mura_monai.ensemble_outputs import cam_weights
    from mura_monai.ensemble_predictor import EnsemblePredictor, is_ensemble_bundle
    from mura_monai.inference import BundlePredictor

    threads = {"onnx_threads": int(onnx_threads)} if onnx_threads is not None else {}
    if is_ensemble_bundle(bundle_dir):
        if zoom:
            raise ValueError("--zoom applies to a single model's bundle, not an ensemble")
        ensemble = EnsemblePredictor(bundle_dir, device=device, models_dir=models_dir,
                                     members_models_dir=members_models_dir, backend=backend, member_overrides=threads)
        metrics = evaluate_ensemble(ensemble, dataset_dir, output_dir, n_bootstrap=n_bootstrap, progress=progress)
        return Evaluated(metrics, [(m.loaded.network, m.loaded.preprocessing, w)
                                   for m, w in zip(ensemble.members, cam_weights(ensemble.fitted)) if w > 0])
    if zoom:
        single = BundlePredictor(bundle_dir, device=device, models_dir=models_dir, overrides={"zoom": True, **threads},
                                 backend=backend)
        metrics = evaluate_zoom(single, dataset_dir, output_dir, n_bootstrap=n_bootstrap, progress=progress)
        return Evaluated(metrics, [(single.loaded.network, single.loaded.preprocessing, 1.0)])
    metrics = evaluate_bundle(bundle_dir, dataset_dir, output_dir, device=device, models_dir=models_dir,
                              overrides={"n_bootstrap": n_bootstrap, **({"backend": backend} if backend else {}), **threads})
    # the report's heatmaps need the eager network only (a backward pass): no exported graph is loaded again
    single = BundlePredictor(bundle_dir, device=device, models_dir=models_dir, backend="torch")
    return Evaluated(metrics, [(single.loaded.network, single.loaded.preprocessing, 1.0)])
