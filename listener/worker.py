"""The analysis worker: takes complete studies from the store, runs the ensemble, fills the outbox.

It runs in its own process (see :mod:`listener.service`) so that a crash in a decoder or in torch
cannot take the DICOM listener down with it, and it loads the ensemble once and keeps it: loading
two networks costs seconds, a study costs a fraction of that. Work comes only from the store, so
a worker that dies mid-study leaves the study ``analysing`` and the next worker claims it again.

A claim is a lease (see :mod:`listener.store`): while it analyses, a thread of the worker renews
it every third of ``[store] lease_s``, so that only a worker that stopped renewing (dead, hung,
cut off from the database) loses its study to another. One that lost it anyway finds out when it
writes its result, and drops it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import cast

import pydicom

from listener.config import ListenerConfig
from listener.database import DATABASE_ERRORS
from listener.exporter import destination_key
from listener.metrics import Metrics
from listener.paths import analysis_dir, log_ref
from listener.store import LeaseLost, Store, Study, StudyState
from mura_monai.results import StudyResult

__all__ = ["Worker", "load_predictor", "worker_prefix"]

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


def worker_prefix(config: ListenerConfig) -> str:
    """What the ids of this service's workers start with: its host and DICOM port, which no other
    service on the host can share. The service releases claims with this prefix at start (its
    workers are dead then), however long their leases had to run."""
    return f"{socket.gethostname()}:{config.listener.port}/"


class _Lease:
    """Renews a claim from a thread of its own while the analysis (which may hold the GIL in
    long stretches, but not for a third of a lease) runs in the caller's."""

    def __init__(self, store: Store, key: str, worker_id: str, lease_s: float) -> None:
        self.store, self.key, self.worker_id, self.lease_s = store, key, worker_id, lease_s
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        try:
            while not self._done.wait(self.lease_s / 3):
                try:
                    if not self.store.heartbeat(self.key, self.worker_id, self.lease_s):
                        self.lost = True
                        logger.warning("study taken over by another worker", extra={"study_ref": log_ref(self.key)})
                        return
                except DATABASE_ERRORS as exc:  # the next renewal may get through before the lease runs out
                    logger.warning("lease not renewed", extra={"study_ref": log_ref(self.key),
                                                               "error": type(exc).__name__})
        finally:
            self.store.close()  # this thread's connection


class _MeteredStore:
    """The store as the worker sees it when it has metrics: the outcome of every analysis is
    counted where it is written (:meth:`Store.finish`, :meth:`Store.fail`), however the worker
    came to write it (one study at a time or in batches)."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store, self._metrics = store, metrics

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def finish(self, *args, **kwargs) -> int:
        try:
            version = self._store.finish(*args, **kwargs)
        except LeaseLost:
            self._metrics.studies_analysed.labels("lease_lost").inc()
            raise
        self._metrics.studies_analysed.labels("analysed").inc()
        return version

    def fail(self, *args, **kwargs) -> StudyState:
        try:
            state = self._store.fail(*args, **kwargs)
        except LeaseLost:
            self._metrics.studies_analysed.labels("lease_lost").inc()
            raise
        self._metrics.studies_analysed.labels("retry" if state == StudyState.WAITING else "failed").inc()
        return state


class AnalysisError(Exception):
    """A study that cannot be analysed; ``retry`` says whether another attempt could help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason, self.retry = reason, retry


class Worker:
    """Loads the ensemble of ``[model]`` once and analyses studies until told to stop."""

    def __init__(self, config: ListenerConfig, store: Store, predictor=None, worker_id: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = cast(Store, _MeteredStore(store, metrics)) if metrics is not None else store
        self.worker_id = worker_id or f"{worker_prefix(config)}{os.getpid()}"
        self.lease_s = config.store.lease_s
        self.predictor = predictor if predictor is not None else self._load_predictor()
        self.destinations = [destination_key(d) for d in config.destinations]

    def _load_predictor(self):
        return load_predictor(self.config)

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Between studies, waits for the store's "work" notification (PostgreSQL) or ``poll_s``,
        whichever comes first; a database that is away is waited for, not fatal."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                busy = self.run_once()
            except DATABASE_ERRORS as exc:
                logger.error("store unavailable", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                busy = False
            if busy and self.metrics is not None:
                self.metrics.analysis_seconds.observe(time.monotonic() - started)
            if not busy:
                self.store.wait("work", poll_s, stop)

    def run_once(self) -> bool:
        """Analyse the next waiting study, if any; returns whether there was one."""
        study = self.store.claim(self.worker_id, self.lease_s)
        if study is None:
            return False
        ref = log_ref(study.key)
        try:
            with _Lease(self.store, study.key, self.worker_id, self.lease_s):
                self._analyse_claimed(study, ref)
        except LeaseLost:
            logger.warning("study taken over by another worker; this worker's result dropped", extra={"study_ref": ref})
        return True

    def _analyse_claimed(self, study: Study, ref: str) -> None:
        max_attempts = self.config.model.max_attempts
        try:
            version, result = self.analyse(study)
        except LeaseLost:
            raise
        except AnalysisError as exc:
            state = self.store.fail(study.key, exc.reason, exc.retry, max_attempts, worker_id=self.worker_id)
            logger.warning("study not analysed", extra={"study_ref": ref, "reason": exc.reason, "state": state})
        except Exception as exc:  # a bug or a resource problem: retried, never silently dropped
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            state = self.store.fail(study.key, reason, True, max_attempts, worker_id=self.worker_id)
            logger.exception("analysis failed", extra={"study_ref": ref, "state": state})
        else:
            logger.info("study analysed", extra={"study_ref": ref, "version": version, "abnormal": result.abnormal,
                                                 "uncertain": result.uncertain, "images": len(result.images)})

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
        self.store.finish(study.key, result, outputs, self.destinations, int(result.needs_attention), result.sr_path,
                          worker_id=self.worker_id)
        return version, result
