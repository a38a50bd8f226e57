"""Running an ensemble bundle: its members, its router, its fitted combination, its outputs.

``bundles/ensemble/configs/inference.json`` names the members (other bundles of this project)
and the combination settings; ``ckpt_dir/ensemble.json`` holds what :func:`fit` learned on a
valid split. This module loads every member once (the listener keeps it loaded), reads each
radiograph once for all members, and produces the infer JSON of docs/formats.md extended with what a
reader and a PACS need: per-body-part threshold and operating point, member probabilities,
uncertainty, and optionally heatmaps and DICOM SR / secondary captures.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mura_monai.body_parts import UNKNOWN, study_body_part
from mura_monai.constants import BODY_PARTS
from mura_monai.data.mura import find_mura_root, mura_datalist
from mura_monai.data.radiograph_reader import RadiographReadError
from mura_monai.ensemble import (
    SELECTION_TOLERANCE,
    FittedEnsemble,
    evaluation_probabilities,
    fit_ensemble_parameters,
    study_uncertainty,
)
from mura_monai.inference import BundlePredictor, collect_inputs, image_source, read_inference_config, refused_records
from mura_monai.metrics import AGGREGATIONS, group_by_study
from mura_monai.results import SCHEMA_VERSION, Algorithm, ImageResult, ImageSource, MemberVersion, StudyResult

__all__ = ["EnsemblePredictor", "MemberSpec", "ensemble_member_specs", "is_ensemble_bundle"]

logger = logging.getLogger(__name__)

_SETTINGS = (
    "combine", "calibration", "operating_point", "aggregation", "weights", "min_studies_per_class",
    "target_sensitivity", "target_specificity", "uncertainty_margin", "uncertain_level", "batch_size",
    "heatmap_method", "heatmap_alpha", "heatmap_studies", "cv_folds", "selection_tolerance",
)


def is_ensemble_bundle(bundle_dir: str | Path) -> bool:
    """Whether a bundle folder is an ensemble (its inference config names members)."""
    config = Path(bundle_dir) / "configs" / "inference.json"
    return config.is_file() and "members" in json.loads(config.read_text())


@dataclass
class MemberSpec:
    """One member: which bundle, which checkpoint folder, its weight for ``weighted_mean``."""

    name: str
    bundle_dir: Path
    models_dir: Path
    weight: float = 1.0

    @property
    def version(self) -> str:
        meta = self.bundle_dir / "configs" / "metadata.json"
        return json.loads(meta.read_text()).get("version", "") if meta.is_file() else ""


def _member_specs(members: Sequence[dict], bundles_dir: Path, members_models_dir: str) -> list[MemberSpec]:
    """Members resolved to folders: ``bundle`` defaults to ``bundles_dir/<name>``; ``models_dir``
    to ``members_models_dir/<name>`` when that is set, else the member bundle's ``models/``."""
    if not members:
        raise ValueError("an ensemble needs at least one member in configs/inference.json 'members'")
    specs = []
    for entry in members:
        if "name" not in entry:
            raise ValueError(f"ensemble member without a 'name': {entry}")
        bundle = Path(entry.get("bundle") or bundles_dir / entry["name"])
        if not (bundle / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"ensemble member {entry['name']!r} is not a bundle: {bundle}")
        default_models = Path(members_models_dir) / entry["name"] if members_models_dir else bundle / "models"
        specs.append(MemberSpec(entry["name"], bundle, Path(entry.get("models_dir") or default_models),
                                float(entry.get("weight", 1.0))))
    return specs


def _resolve_members(parser, fitted: FittedEnsemble | None) -> list[MemberSpec]:
    """The configured members, or those ``fitted`` was fitted on where they differ (an ensemble
    fitted with ``fit-ensemble --members`` is used with the members it was fitted on)."""
    members = parser.get_parsed_content("members")
    if fitted is not None:
        configured = {m["name"]: m for m in members}
        if list(configured) != list(fitted.members):
            members = [configured.get(name, {"name": name, "weight": 1.0}) for name in fitted.members]
    return _member_specs(
        members, Path(parser.get_parsed_content("bundles_dir")), parser.get_parsed_content("members_models_dir"),
    )


def ensemble_member_specs(bundle_dir: str | Path, models_dir: str | Path | None = None,
                          members_models_dir: str | Path | None = None) -> list[MemberSpec]:
    """The members an ensemble bundle runs, resolved as :class:`EnsemblePredictor` resolves them,
    without loading a network: for work on each member's own files (``mura-monai export``).
    An ensemble not fitted yet runs its configured members."""
    parser = read_inference_config(Path(bundle_dir).resolve(), Path(models_dir).resolve() if models_dir is not None else None)
    if members_models_dir is not None:
        parser["members_models_dir"] = str(Path(members_models_dir).resolve())
    fitted_path = Path(parser.get_parsed_content("fitted_path"))
    return _resolve_members(parser, FittedEnsemble.load(fitted_path) if fitted_path.is_file() else None)


class EnsemblePredictor:
    """An ensemble bundle loaded for inference, fitting and evaluation.

    Args:
        bundle_dir: the ensemble bundle (``configs/inference.json``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``, for every member.
        models_dir: where ``ensemble.json`` lives (default the bundle's ``models/``).
        members_models_dir: a folder holding one checkpoint folder per member name (default:
            each member bundle's own ``models/``).
        overrides: config values replacing the bundle's (``combine``, ``operating_point``, ...).
        fitted: load ``ensemble.json``; :meth:`fit` needs the members only.
        backend: every member's scoring backend (default: each member bundle's own ``backend``).
        member_overrides: config values for every member (``onnx_threads``, ``amp``, ...), where
            its config has the key.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        device: str = "auto",
        models_dir: str | Path | None = None,
        members_models_dir: str | Path | None = None,
        overrides: dict | None = None,
        fitted: bool = True,
        backend: str | None = None,
        member_overrides: dict | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        parser = read_inference_config(self.bundle_dir, Path(models_dir).resolve() if models_dir is not None else None)
        if members_models_dir is not None:
            parser["members_models_dir"] = str(Path(members_models_dir).resolve())
        for key, value in (overrides or {}).items():
            if key not in parser.get():
                raise ValueError(f"unknown ensemble setting {key!r}")
            parser[key] = value
        self.settings = {key: parser.get_parsed_content(key) for key in _SETTINGS if key in parser.get()}
        self.fitted_path = Path(parser.get_parsed_content("fitted_path"))
        self.fitted = FittedEnsemble.load(self.fitted_path) if fitted else None
        self.specs = _resolve_members(parser, self.fitted if "members" not in (overrides or {}) else None)
        self.members = [BundlePredictor(s.bundle_dir, device=device, models_dir=s.models_dir, backend=backend,
                                        overrides=member_overrides) for s in self.specs]
        router = parser.get_parsed_content("router")
        self.router = BundlePredictor(router["bundle"], device=device, models_dir=router.get("models_dir")) if router else None
        self.version = json.loads((self.bundle_dir / "configs" / "metadata.json").read_text()).get("version", "")

    @property
    def member_names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def algorithm(self) -> Algorithm:
        """What the DICOM outputs name as the algorithm: the ensemble and its members' versions."""
        return Algorithm(name=f"mura-monai {self.bundle_dir.name}", version=self.version,
                         members=tuple(MemberVersion(s.name, s.version) for s in self.specs))

    # -- running the members -----------------------------------------------------------
    def member_probabilities(
        self, paths: Sequence[Path], progress: bool = False, unreadable: list | None = None,
        batch_size: int | None = None, keep: dict | None = None,
    ) -> tuple[list[ImageSource], np.ndarray]:
        """The images read (study, body part and its source, SOP instance) and the members'
        probabilities ``(N, M)``; each file is decoded once for all members.

        A file that cannot be read raises :class:`RadiographReadError`, unless ``unreadable`` is
        a list: then ``(path, reason)`` goes there and the study goes on without it (the
        listener analyses what it can of a study and records what it could not).

        ``batch_size`` (default: the bundle's ``batch_size``) is how many images go through the
        networks together: the listener sizes it to the studies it analyses at once.

        ``keep``, a dict, receives each image read as
        :class:`~mura_monai.ensemble_outputs.DecodedImage` (radiograph and every member's input)
        under ``str(path)``, for :func:`~mura_monai.ensemble_outputs.write_study_outputs` to draw
        the heatmaps without decoding the file again. Only on request: a full-size radiograph is
        some 30 MB as float32 and all of them stay until the caller drops the dict (the listener
        holds one batch's, which ``[model] batch_images`` bounds unless one study is larger).
        """
        from tqdm import tqdm

        batch_size = int(batch_size or self.settings.get("batch_size", 8))
        records: list[ImageSource] = []
        rows: list[list[float]] = []
        pending: list[list[torch.Tensor]] = [[] for _ in self.members]
        pending_router: list[torch.Tensor] = []
        pending_index: list[int] = []

        def flush() -> None:
            columns = [member.forward(batch) for member, batch in zip(self.members, pending)]
            rows.extend(list(r) for r in zip(*columns))
            if pending_router:
                self._route(records, pending_index, pending_router)
            for batch in pending:
                batch.clear()
            pending_router.clear()
            pending_index.clear()

        for path in tqdm(paths, desc="ensemble", unit="image", disable=not progress):
            try:
                loaded = self.members[0].load(path)
            except RadiographReadError as exc:
                if unreadable is None:
                    raise
                unreadable.append((str(path), str(exc.reason)))
                continue
            record = image_source(path, loaded["image"])
            records.append(record)
            prepared = [member.prepare(loaded) for member in self.members]
            for x, batch in zip(prepared, pending):
                batch.append(x)
            if keep is not None:
                from mura_monai.ensemble_outputs import decoded_image

                keep[str(path)] = decoded_image(self.members, loaded, prepared)
            if record.body_part == UNKNOWN and self.router is not None:
                pending_router.append(self.router.prepare(loaded))
                pending_index.append(len(records) - 1)
            if len(pending[0]) == batch_size:
                flush()
        if pending[0]:
            flush()
        return records, np.asarray(rows, dtype=float).reshape(len(records), len(self.members))

    def _route(self, records: list[ImageSource], which: list[int], batch: list[torch.Tensor]) -> None:
        """Body part from the router for images whose DICOM and path say nothing."""
        loaded = self.router.loaded
        with torch.no_grad():
            logits = loaded.network.router(torch.stack(batch).to(loaded.device))
        for i, index in zip(which, logits.argmax(dim=1).cpu().tolist()):
            records[i] = records[i].with_body_part(BODY_PARTS[index], "router")

    # -- inference ---------------------------------------------------------------------
    def predict(
        self,
        inputs: Iterable[str | Path],
        progress: bool = False,
        heatmaps_dir: str | Path | None = None,
        dicom_out: str | Path | None = None,
    ) -> dict:
        """The infer JSON document for the inputs, writing heatmaps and DICOM outputs on request."""
        unreadable: list[tuple[str, str]] = []
        records, P = self.member_probabilities(collect_inputs(inputs), progress=progress, unreadable=unreadable)
        studies = self.studies(records, P) if records else []
        if heatmaps_dir is not None or dicom_out is not None:
            from mura_monai.ensemble_outputs import write_study_outputs

            studies = [write_study_outputs(self, study, heatmaps_dir, dicom_out) for study in studies]
        return {
            "schema_version": SCHEMA_VERSION,
            "bundle": self.bundle_dir.name,
            "bundle_dir": str(self.bundle_dir),
            "ensemble": self.describe(),
            "studies": [study.to_json() for study in studies],
            "refused": refused_records(unreadable),
        }

    def describe(self) -> dict:
        fitted = self._require_fitted()
        return {
            **self.algorithm.to_json(),
            "combine": fitted.combine,
            "calibration": fitted.calibration,
            "operating_point": self.settings["operating_point"],
            "aggregation": fitted.aggregation,
            "members_used": fitted.used_members,
            **({"chosen": fitted.selection["chosen"]} if fitted.selection else {}),
            "backends": {name: member.backend_used() for name, member in zip(self.member_names, self.members)},
        }

    def studies(self, records: Sequence[ImageSource], P: np.ndarray) -> list[StudyResult]:
        """Study results from the images read and the members' probabilities on them."""
        fitted = self._require_fitted()
        prob = fitted(P)
        member_prob = fitted.member_probabilities(P)
        reduce = AGGREGATIONS[fitted.aggregation]
        operating_point = self.settings["operating_point"]
        used = fitted.used_members  # members left out by the fit are reported, but do not make the study doubtful
        studies = []
        for study, index in group_by_study(records).items():
            part = study_body_part(records[i].body_part for i in index)
            p = float(reduce(prob[index]))
            members = {name: float(reduce(member_prob[index, j])) for j, name in enumerate(self.member_names)}
            threshold, fitted_on = fitted.threshold(part, operating_point)
            doubt = study_uncertainty([members[name] for name in used], p, threshold, self.settings["uncertainty_margin"])
            studies.append(StudyResult(
                study=study, body_part=part, probability=p, abnormal=p > threshold, threshold=threshold,
                body_part_source="+".join(sorted({records[i].body_part_source for i in index})),
                threshold_fitted_on=fitted_on, operating_point=operating_point, **doubt,
                uncertain=doubt["uncertainty"] >= self.settings["uncertain_level"], members=members,
                images=tuple(ImageResult(
                    path=records[i].path, probability=float(prob[i]), sop_instance_uid=records[i].sop_instance_uid,
                    body_part=records[i].body_part,
                    members={name: float(member_prob[i, j]) for j, name in enumerate(self.member_names)})
                    for i in index)))
        return studies

    def _require_fitted(self) -> FittedEnsemble:
        if self.fitted is None:
            raise FileNotFoundError(f"ensemble is not fitted: {self.fitted_path} (run `mura-monai fit-ensemble` first)")
        return self.fitted

    # -- fitting and evaluation on a MURA root -------------------------------------------
    def valid_split(self, dataset_dir: str | Path, progress: bool = False) -> tuple[list[dict], np.ndarray]:
        """MURA valid-split image records (with labels) and the members' probabilities on them."""
        images = mura_datalist(find_mura_root(dataset_dir), "valid")
        _, P = self.member_probabilities([Path(r["image"]) for r in images], progress=progress)
        return images, P

    def _fit_kwargs(self) -> dict:
        weights = self.settings.get("weights", "auto")
        return {
            "combine": self.settings["combine"],
            "calibration": self.settings["calibration"],
            "aggregation": self.settings["aggregation"],
            "weights": None if weights in ("auto", None) else [float(w) for w in weights],
            "min_studies_per_class": int(self.settings["min_studies_per_class"]),
            "target_sensitivity": float(self.settings["target_sensitivity"]),
            "target_specificity": float(self.settings["target_specificity"]),
            "cv_folds": int(self.settings.get("cv_folds", 5)),
            "selection_tolerance": float(self.settings.get("selection_tolerance", SELECTION_TOLERANCE)),
        }

    def fit(self, dataset_dir: str | Path, progress: bool = False) -> FittedEnsemble:
        """Fit combination, calibration and thresholds on the valid split and save ``ensemble.json``."""
        images, P = self.valid_split(dataset_dir, progress=progress)
        args = ([r["label"] for r in images], [r["study"] for r in images], [r["body_part"] for r in images],
                self.member_names)
        settings = self._fit_kwargs()
        self.fitted = fit_ensemble_parameters(P, *args, **settings)
        self.fitted.fit_summary["dataset_dir"] = str(find_mura_root(dataset_dir))
        self.fitted.save(self.fitted_path)
        logger.info("ensemble fitted on %d studies; written to %s", self.fitted.fit_summary["n_studies"], self.fitted_path)
        return self.fitted

    def evaluation_records(self, dataset_dir: str | Path, progress: bool = False) -> list[dict]:
        """Labelled image records scored by the ensemble and by each member on the valid split.

        The ensemble's probabilities are cross-fitted (out of fold) when the ensemble was fitted
        on this same split with a fit that changes the ranking, so its AUC compares fairly with
        its members'. A combination chosen by ``combine="auto"`` is cross-fitted on the folds the
        selection scored it on, so the AUC reported is the one recorded for it in ``ensemble.json``.
        """
        images, P = self.valid_split(dataset_dir, progress=progress)
        fitted = self._require_fitted()
        labels, studies, parts = [r["label"] for r in images], [r["study"] for r in images], [r["body_part"] for r in images]
        same_split = fitted.fit_summary.get("dataset_dir") == str(find_mura_root(dataset_dir))
        prob, cross_fit = evaluation_probabilities(fitted, P, labels, studies, parts, same_split,
                                                   n_folds=int(self.settings.get("cv_folds", 5)))
        return [
            {"path": r["image"], "study": r["study"], "body_part": r["body_part"], "label": int(r["label"]),
             "probability": float(p), "members": dict(zip(self.member_names, map(float, row))),
             "cross_fitted": cross_fit}
            for r, p, row in zip(images, prob, P)
        ]
