"""The analysis worker: takes complete studies from the store, runs the ensemble, fills the outbox.

It runs in its own process (see :mod:`listener.service`) so that a crash in a decoder or in torch
cannot take the DICOM listener down with it, and it loads the ensemble once and keeps it: loading
two networks costs seconds, a study costs a fraction of that. Work comes only from the store, so
a worker that dies mid-study leaves the study ``analysing`` and the next worker claims it again.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pydicom

from listener.config import ListenerConfig
from listener.exporter import destination_key
from listener.paths import analysis_dir, log_ref
from listener.store import Store, Study
from mura_monai.results import StudyResult

__all__ = ["Worker", "load_predictor"]

logger = logging.getLogger("listener.worker")


def load_predictor(config: ListenerConfig):
    """The ensemble of ``[model]``, as the worker and the review app's ``/infer`` run it."""
    from mura_monai.ensemble_predictor import EnsemblePredictor

    model = config.model
    return EnsemblePredictor(
        config.resolve(model.bundle), device=model.device,
        models_dir=config.resolve(model.models_dir) if model.models_dir else None,
        members_models_dir=config.resolve(model.members_models_dir) if model.members_models_dir else None,
    )


class AnalysisError(Exception):
    """A study that cannot be analysed; ``retry`` says whether another attempt could help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason, self.retry = reason, retry


class Worker:
    """Loads the ensemble of ``[model]`` once and analyses studies until told to stop."""

    def __init__(self, config: ListenerConfig, store: Store, predictor=None) -> None:
        self.config = config
        self.store = store
        self.predictor = predictor if predictor is not None else self._load_predictor()
        self.destinations = [destination_key(d) for d in config.destinations]

    def _load_predictor(self):
        return load_predictor(self.config)

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        while not stop.is_set():
            if not self.run_once():
                stop.wait(poll_s)

    def run_once(self) -> bool:
        """Analyse the next waiting study, if any; returns whether there was one."""
        study = self.store.claim()
        if study is None:
            return False
        ref = log_ref(study.key)
        try:
            version, result = self.analyse(study)
        except AnalysisError as exc:
            state = self.store.fail(study.key, exc.reason, exc.retry, self.config.model.max_attempts)
            logger.warning("study not analysed", extra={"study_ref": ref, "reason": exc.reason, "state": state})
        except Exception as exc:  # a bug or a resource problem: retried, never silently dropped
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            state = self.store.fail(study.key, reason, True, self.config.model.max_attempts)
            logger.exception("analysis failed", extra={"study_ref": ref, "state": state})
        else:
            logger.info("study analysed", extra={"study_ref": ref, "version": version, "abnormal": result.abnormal,
                                                 "uncertain": result.uncertain, "images": len(result.images)})
        return True

    def analyse(self, study: Study) -> tuple[int, StudyResult]:
        """Score the study's instances, write heatmaps, SR and SCs, and queue them for export."""
        instances = self.store.instances(study.key)
        unreadable: list[tuple[str, str]] = []
        records, P = self.predictor.member_probabilities([Path(i["path"]) for i in instances], unreadable=unreadable)
        if not records:
            reasons = sorted({reason for _, reason in unreadable})
            raise AnalysisError("no radiograph to score in the study" + (f" ({'; '.join(reasons)[:200]})" if reasons else ""),
                                retry=False)
        (result,) = self.predictor.studies(records, P)
        version = study.version + 1
        # the review's "original" label names the analysis it copies
        result = dataclasses.replace(result, unreadable=len(unreadable), analysis_version=version)
        out = analysis_dir(self.config.spool_dir, study.key, version)
        predecessor = pydicom.dcmread(study.sr_path) if study.sr_path and Path(study.sr_path).is_file() else None
        from mura_monai.ensemble_outputs import write_study_outputs

        result = write_study_outputs(self.predictor, result, out / "heatmaps" if self.config.model.heatmaps else None,
                                     out / "dicom", predecessor=predecessor)
        outputs = list(result.dicom_outputs or ())
        self.store.finish(study.key, result, outputs, self.destinations, int(result.needs_attention), result.sr_path)
        return version, result
