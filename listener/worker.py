"""The analysis worker: takes complete studies from the store, runs the ensemble, fills the outbox.

It runs in its own process (see :mod:`listener.service`) so that a crash in a decoder or in torch
cannot take the DICOM listener down with it, and it loads the ensemble once and keeps it: loading
two networks costs seconds, a study costs a fraction of that. Work comes only from the store, so
a worker that dies mid-study leaves the study ``analysing`` and the next worker claims it again.

A claim is a lease (see :mod:`listener.store`): while it analyses, a thread of the worker renews
it every third of ``[store] lease_s``, so that only a worker that stopped renewing (dead, hung,
cut off from the database) loses its study to another. One that lost it anyway finds out when it
writes its result, and drops it.

When several studies wait, a worker takes up to ``[model] batch_studies`` of them at once (as
many as fit in ``batch_images``) and runs their images through the networks in shared batches,
which on a GPU costs little more than one study; it holds and renews a lease on each, and
writes, finishes or fails each on its own, so that a batch changes how fast results come, never
what they are.

Two things bring the SR to the PACS sooner than the whole analysis takes. A worker with nothing
waiting scores the instances of studies still receiving (:meth:`Worker.prescore`): by the time
``stable_age_s`` has passed, most of a study's images are decoded and scored, and its analysis
only combines them. And the SR is written and queued first, the heatmaps (a backward pass per
member and image) after it, their captures queued as soon as they are drawn.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pydicom

from listener.config import ListenerConfig
from listener.database import DATABASE_ERRORS
from listener.exporter import destination_key
from listener.metrics import Metrics
from listener.paths import analysis_dir, log_ref
from listener.store import LeaseLost, Store, Study, StudyState
from mura_monai.results import ImageSource, StudyResult

__all__ = ["Worker", "load_predictor", "worker_prefix"]

logger = logging.getLogger("listener.worker")


def load_predictor(config: ListenerConfig):
    """The ensemble of ``[model]``, as the worker and the review app's ``/infer`` run it.

    Each member's backend is logged: ``auto`` falls back to PyTorch when an export is missing
    or stale, and the administrator should see that at start, not infer it from the latency.
    """
    from mura_monai.ensemble_predictor import EnsemblePredictor

    model = config.model
    predictor = EnsemblePredictor(
        config.resolve(model.bundle), device=model.device,
        models_dir=config.resolve(model.models_dir) if model.models_dir else None,
        members_models_dir=config.resolve(model.members_models_dir) if model.members_models_dir else None,
        backend=model.backend, member_overrides={"onnx_threads": model.onnx_threads},
    )
    for name, member in zip(predictor.member_names, predictor.members):
        used = member.backend_used()
        logger.info("member %s scores with the %s backend (%s)", name, used["name"], used["reason"],
                    extra={"member": name, "backend": used["name"], "backend_reason": used["reason"]})
    return predictor


def worker_prefix(config: ListenerConfig) -> str:
    """What the ids of this service's workers start with: its host and DICOM port, which no other
    service on the host can share. The service releases claims with this prefix at start (its
    workers are dead then), however long their leases had to run."""
    return f"{socket.gethostname()}:{config.listener.port}/"


class _Lease:
    """Renews the claims on the studies a worker holds from a thread of its own while the
    analysis (which may hold the GIL in long stretches, but not for a third of a lease) runs in
    the caller's. Every study of a batch is renewed until it is released, so that the last one
    written is as safe from takeover as the first."""

    def __init__(self, store: Store, keys: Sequence[str], worker_id: str, lease_s: float) -> None:
        self.store, self.worker_id, self.lease_s = store, worker_id, lease_s
        self.lost: set[str] = set()
        self._held = set(keys)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()

    def release(self, key: str) -> None:
        """No more renewals: the study is written (or failed), and its claim is gone with it."""
        with self._lock:
            self._held.discard(key)

    def _renew(self) -> None:
        try:
            while not self._done.wait(self.lease_s / 3):
                with self._lock:
                    keys = sorted(self._held)
                for key in keys:
                    try:
                        if not self.store.heartbeat(key, self.worker_id, self.lease_s):
                            self._let_go(key)
                    except DATABASE_ERRORS as exc:  # the next renewal may get through before the lease runs out
                        logger.warning("lease not renewed", extra={"study_ref": log_ref(key),
                                                                   "error": type(exc).__name__})
        finally:
            self.store.close()  # this thread's connection

    def _let_go(self, key: str) -> None:
        """A renewal refused: either the worker finished the study in between (nothing to say)
        or another worker holds it now."""
        with self._lock:
            if key not in self._held:
                return
            self._held.discard(key)
        study = self.store.study(key)
        if study is not None and study.state == StudyState.ANALYSING and study.claimed_by != self.worker_id:
            self.lost.add(key)
            logger.warning("study taken over by another worker", extra={"study_ref": log_ref(key)})


# how many instances of receiving studies a worker scores ahead between two looks at the queue:
# a study that completes meanwhile waits for at most this many decodes and forward passes
PRESCORE_BATCH = 4


def _stamp(path: str | Path) -> tuple[int, int, int] | None:
    """What tells a spooled file apart from another stored at the same path (an instance sent
    again is written anew and renamed into place): a score kept for one is not the other's."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclasses.dataclass
class _Early:
    """One file as the networks scored it: its record and probabilities, or why it could not be
    read, and the decoded image for the heatmaps (unless no study gets any). Neither record nor
    reason: scoring it ahead failed, and its study's analysis is to score it."""

    stamp: tuple[int, int, int] | None
    record: ImageSource | None = None
    row: np.ndarray | None = None
    reason: str | None = None
    decoded: object | None = None


@dataclasses.dataclass
class _Heatmaps:
    """A study whose SR is queued and whose heatmaps are still to draw, with its decoded images."""

    key: str
    version: int
    result: StudyResult
    out: Path
    decoded: dict


@dataclasses.dataclass
class _Scored:
    """One study's share of a batch run through the networks, with its images as the scoring
    decoded them (by path) for the heatmaps: held until the study is written, then dropped."""

    records: list
    P: np.ndarray
    unreadable: list[tuple[str, str]]
    decoded: dict = dataclasses.field(default_factory=dict)


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
        self._early: dict[str, _Early] = {}  # by path: instances scored before their study was complete

    def _load_predictor(self):
        return load_predictor(self.config)

    def warm_up(self) -> None:
        """Before the worker says it is ready: each member's first pass, and the modules that
        write the SR and draw the heatmaps (highdicom alone takes about a second to import),
        so that the first study after a start is not the slowest."""
        import mura_monai.dicom_out  # noqa: F401
        import mura_monai.explain  # noqa: F401

        for member in self.predictor.members:
            member.warm_up()

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
            if busy and self.metrics is not None:  # a batch's time shared among its studies
                elapsed = time.monotonic() - started
                self.metrics.batch_studies.observe(busy)
                for _ in range(busy):
                    self.metrics.analysis_seconds.observe(elapsed / busy)
            if not busy:
                try:
                    ahead = self.prescore()
                except DATABASE_ERRORS as exc:
                    logger.error("store unavailable", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                    ahead = 0
                if not ahead:  # new instances wake it too, to be scored ahead
                    self.store.wait(("work", "instances") if self.config.model.prescore_images else "work", poll_s, stop)

    def prescore(self) -> int:
        """Score up to :data:`PRESCORE_BATCH` instances of studies still receiving, and keep the
        scores (and decoded images) until their study is analysed; returns how many were scored.

        Only between analyses, and at most ``[model] prescore_images`` kept: a study being
        received is not waited for, but neither is a complete one delayed by much. Scores of
        studies no longer waiting here (analysed by another worker) are dropped first. What is
        kept is the probabilities the analysis would compute itself, file for file: the images
        of a study are scored independently of each other, and a file changed since is scored
        again (:func:`_stamp`)."""
        limit = self.config.model.prescore_images
        if not limit:
            return 0
        pending = self.store.receiving_instances(limit=4 * limit + 64)
        live = {row["path"] for row in pending}
        for path in [p for p in self._early if p not in live]:
            del self._early[path]
        todo: list[Path] = []
        for row in pending:
            if len(self._early) + len(todo) >= limit or len(todo) == PRESCORE_BATCH:
                break
            early = self._early.get(row["path"])
            if row["state"] == StudyState.RECEIVED and (early is None or early.stamp != _stamp(row["path"])):
                todo.append(Path(row["path"]))
        if todo:
            try:
                self._early.update(self._score_files(todo))
            except Exception as exc:  # tried once: the study's analysis scores them itself, and fails as it must
                logger.warning("instances not scored ahead; left to their study's analysis",
                               extra={"images": len(todo), "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                self._early.update((str(path), _Early(_stamp(path))) for path in todo)
            else:
                logger.debug("instances scored ahead", extra={"images": len(todo)})
        return len(todo)

    def _score_files(self, files: Sequence[Path]) -> dict[str, _Early]:
        """The files through the ensemble (each decoded once), by path."""
        stamps = {str(path): _stamp(path) for path in files}  # before reading: a file changed after is scored again
        unreadable: list[tuple[str, str]] = []
        # the decoded images are kept for the heatmaps unless no study can get any
        keep: dict | None = {} if self.config.model.heatmap_studies != "none" else None
        records, P = self.predictor.member_probabilities(list(files), unreadable=unreadable,
                                                         batch_size=self.config.model.batch_images, keep=keep)
        scored = {path: _Early(stamps[path], record=record, row=row, decoded=keep.get(path) if keep else None)
                  for record, row, path in ((r, P[i], r.path) for i, r in enumerate(records))}
        scored.update((path, _Early(stamps[path], reason=reason)) for path, reason in unreadable)
        return scored

    def run_once(self) -> int:
        """Analyse the next waiting studies, as many as ``[model] batch_studies`` and
        ``batch_images`` let through the networks together; returns how many (0: none waited).

        Each study of a batch gets its own result, outputs and state, exactly as if analysed
        alone: one that fails, or whose lease is lost, does not take the others with it."""
        model = self.config.model
        studies = self.store.claim_many(self.worker_id, model.batch_studies, self.lease_s, max_images=model.batch_images)
        if not studies:
            return 0
        started = time.perf_counter()
        paths = {study.key: [Path(i["path"]) for i in self.store.instances(study.key)] for study in studies}
        with _Lease(self.store, list(paths), self.worker_id, self.lease_s) as lease:
            scored: dict[str, _Scored] = {}
            if len(studies) > 1:
                try:
                    scored = self.score(paths)
                except Exception:  # one study's file may be what breaks the batch: each is scored alone below
                    logger.exception("batch not scored; its studies are scored one by one",
                                     extra={"studies": len(studies)})
            drawings: list[_Heatmaps] = []
            for study in studies:
                try:  # popped: a study's decoded images go once its heatmaps are drawn, not with the batch
                    drawing = self._analyse_claimed(study, scored.pop(study.key, None))
                finally:
                    lease.release(study.key)
                if drawing is not None:
                    drawings.append(drawing)
        for drawing in drawings:  # every SR of the batch is queued before the first heatmap is drawn
            self.draw_heatmaps(drawing)
        logger.info("batch analysed", extra={"studies": len(studies), "images": sum(map(len, paths.values())),
                                             "seconds": round(time.perf_counter() - started, 3)})
        return len(studies)

    def _analyse_claimed(self, study: Study, scored: _Scored | None) -> _Heatmaps | None:
        ref = log_ref(study.key)
        max_attempts = self.config.model.max_attempts
        try:
            try:
                version, result, drawing = self.analyse(study) if scored is None else self.analyse(study, scored)
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
                                                     "uncertain": result.uncertain, "images": len(result.images),
                                                     "heatmaps_to_draw": drawing is not None})
                return drawing
        except LeaseLost:
            logger.warning("study taken over by another worker; this worker's result dropped", extra={"study_ref": ref})
        return None

    def score(self, paths: dict[str, list[Path]]) -> dict[str, _Scored]:
        """The studies' images run through the ensemble together (each file decoded once, none
        that :meth:`prescore` scored already and that has not changed since), and split back by
        the study each file was stored under: a StudyInstanceUID does not tell two front-ends'
        studies apart."""
        files = [path for study_files in paths.values() for path in study_files]
        early = {str(path): self._early.pop(str(path), None) for path in files}
        scored = {path: e for path, e in early.items()
                  if e is not None and e.stamp == _stamp(path) and (e.record is not None or e.reason is not None)}
        if fresh := [path for path in files if str(path) not in scored]:
            scored.update(self._score_files(fresh))
        if len(files) > len(fresh):
            logger.debug("instances scored ahead used", extra={"images": len(files) - len(fresh)})
        columns = len(self.predictor.members)
        result = {}
        for key, study_files in paths.items():
            entries = [scored[str(path)] for path in study_files]
            kept = [e for e in entries if e.record is not None]
            result[key] = _Scored([e.record for e in kept],
                                  np.asarray([e.row for e in kept], dtype=float).reshape(len(kept), columns),
                                  [(str(path), e.reason) for path, e in zip(study_files, entries) if e.reason is not None],
                                  {path: e.decoded for path, e in zip(map(str, study_files), entries)
                                   if e.record is not None and e.decoded is not None})
        return result

    def analyse(self, study: Study, scored: _Scored | None = None) -> tuple[int, StudyResult, _Heatmaps | None]:
        """Score the study's instances (unless its batch or :meth:`prescore` did), write the SR
        and queue it for export; returns the new version, the result and, when the study is to
        get heatmaps, what :meth:`draw_heatmaps` needs to draw them (the images as the scoring
        decoded them: no file is decoded twice)."""
        if scored is None:
            scored = self.score({study.key: [Path(i["path"]) for i in self.store.instances(study.key)]})[study.key]
        records, P, unreadable = scored.records, scored.P, scored.unreadable
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
        from mura_monai.ensemble_outputs import heatmap_policy, wants_heatmaps, write_study_sr

        result = write_study_sr(self.predictor, result, out / "dicom", predecessor=predecessor)
        drawing = wants_heatmaps(result, heatmap_policy(self.predictor.settings, self.config.model.heatmap_studies))
        self.store.finish(study.key, result, list(result.dicom_outputs or ()), self.destinations,
                          int(result.needs_attention), result.sr_path, worker_id=self.worker_id, captures_to_come=drawing)
        if not drawing:
            scored.decoded.clear()
            return version, result, None
        return version, result, _Heatmaps(study.key, version, result, out, scored.decoded)

    def draw_heatmaps(self, job: _Heatmaps) -> StudyResult | None:
        """The heatmaps of a study whose SR is queued: PNGs for the review app, secondary captures
        queued behind the SR, and the stored result updated to name them. A failure here loses
        the heatmaps, never the result: it is logged and the study keeps its SR (the lease was
        released with it, so the heatmaps are not retried)."""
        from mura_monai.ensemble_outputs import write_study_heatmaps

        ref = log_ref(job.key)
        try:
            drawn = write_study_heatmaps(self.predictor, job.result, job.out / "heatmaps" if self.config.model.heatmaps else None,
                                         job.out / "dicom", decoded=job.decoded)
        except Exception as exc:
            logger.exception("heatmaps not drawn; the study keeps its SR",
                             extra={"study_ref": ref, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            drawn = None
        finally:
            job.decoded.clear()  # written (or given up): the radiographs are not needed again
        # none drawn: nothing more to come, the study is settled on its SR alone
        captures = list(drawn.dicom_outputs or ())[len(job.result.dicom_outputs or ()):] if drawn is not None else []
        if not self.store.add_outputs(job.key, job.version, drawn or job.result, captures, self.destinations,
                                      int(job.result.needs_attention)):
            logger.warning("heatmaps dropped: the study was analysed or corrected again meanwhile",
                           extra={"study_ref": ref, "version": job.version})
            return None
        if drawn is not None:
            logger.info("heatmaps queued", extra={"study_ref": ref, "version": job.version, "captures": len(captures)})
        return drawn
