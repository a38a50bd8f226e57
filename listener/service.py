"""The running service: SCP, study assembly, a supervised worker process, the exporter, and the
review app's process when listener.toml has a ``[review]`` table; or one role of these
(``mura-listener serve --role scp|worker|exporter``) so that each can run, as many times as the
load needs, on hosts of its own around one PostgreSQL store (see :mod:`listener.roles`).

Everything meets in the store (:mod:`listener.store`), so the parts share no memory: the SCP
threads record instances, the assembly loop marks studies complete after ``stable_age_s``, the
worker process analyses them, the exporter sends what the worker wrote. A worker that dies is
restarted and its study claimed again; SIGTERM stops accepting associations first, then lets the
worker finish the study in hand.

Roles on several hosts share the spool folder as well as the database (an NFS mount at the same
path on every host: the store keeps instance and result paths absolute). Front-ends write into a
``tmp`` folder of their own, and a study is told apart by calling AE title and StudyInstanceUID,
not by the front-end that received it, so one study sent to two front-ends is one study.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

from listener.config import ListenerConfig, load_config
from listener.database import DATABASE_ERRORS
from listener.exporter import Exporter
from listener.metrics import Metrics
from listener.paths import store_url
from listener.processes import stop_when_parent_dies
from listener.roles import ROLES, Heartbeat, default_id
from listener.scp import StorageSCP
from listener.spool import Spool
from listener.store import ExportState, Store
from listener.worker import worker_prefix

__all__ = ["ListenerService", "open_store", "status_report", "status_rows"]

logger = logging.getLogger("listener.service")


def open_store(config: ListenerConfig) -> Store:
    return Store(store_url(config))


def _device_name(device: str) -> str:
    """What ``auto`` comes to on this host, for the roles table."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _worker_main(config_path: str, stop, log_format: str, claim_prefix: str | None = None, role_id: str = "",
                 device: str | None = None, metrics_port: int = 0) -> None:
    """Entry point of the worker process (spawned: no torch state inherited from the parent).
    It beats for itself, so that a worker that hangs falls silent in ``status``."""
    from listener.logs import setup_logging
    from listener.worker import Worker

    setup_logging(log_format)
    stop_when_parent_dies(stop)
    config = load_config(config_path)
    if device:
        config.model.device = device
    store = open_store(config)
    state: dict[str, object] = {"state": "loading"}
    heartbeat = Heartbeat(store, role_id or f"{default_id()}/worker", "worker", _device_name(config.model.device),
                          details=lambda: dict(state)).start()
    metrics = None
    try:
        if metrics_port:
            metrics = Metrics("worker")
            metrics.watch_queue(store)
            metrics.serve(metrics_port)
        worker_id = f"{claim_prefix}{os.getpid()}" if claim_prefix else None
        worker = Worker(config, store, worker_id=worker_id, metrics=metrics)
        worker.warm_up()
        predictor = worker.predictor  # status shows what scores: auto may have fallen back to torch
        state.update(state="ready", worker_id=worker.worker_id,
                     backends={n: m.backend_used()["name"] for n, m in zip(predictor.member_names, predictor.members)})
        logging.getLogger("listener.worker").info("worker ready",
                                                  extra={"bundle": str(config.resolve(config.model.bundle))})
        worker.run(stop)
    finally:
        heartbeat.stop()
        if metrics is not None:
            metrics.stop()


class ListenerService:
    """``run()`` blocks until ``stop`` is set (SIGTERM / SIGINT in :mod:`listener.__main__`).

    ``role``: ``all`` (every part, in one service), or ``scp`` (front-end: SCP, study assembly,
    the review app), ``worker`` (the supervised worker process) or ``exporter`` alone.
    ``service_id`` names this service's rows in the roles table (``<id>/<role>``) and, when
    given, its workers' claims (``<id>/<pid>``): a service restarted with the same id releases
    its dead workers' claims at once, without waiting for their leases to run out.
    ``device`` replaces ``[model] device`` for this service's worker; ``metrics_port`` replaces
    ``[listener] metrics_port`` (0: no metrics). The ``all`` role serves its own metrics there and
    its worker process's on the port after it; the ``worker`` role's worker process serves there."""

    def __init__(self, config: ListenerConfig, role: str = "all", service_id: str | None = None,
                 device: str | None = None, metrics_port: int | None = None) -> None:
        if config.path is None:
            raise ValueError("the service needs a config loaded from a file (the worker process reads it)")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.config = config
        self.role = role
        self.service_id = service_id or default_id()
        # the all role keeps its workers' claims named by host and DICOM port (as before roles);
        # a worker-only service has no port of its own, so its id (unique while it runs) names them
        self.claim_prefix = f"{service_id}/" if service_id else (
            worker_prefix(config) if role == "all" else f"{self.service_id}/")
        self.device = device
        self.metrics_port = config.listener.metrics_port if metrics_port is None else metrics_port
        self.store = open_store(config)
        self.stop = threading.Event()
        self._mp = multiprocessing.get_context("spawn")
        self._worker: tuple[BaseProcess, EventType] | None = None  # the process and its own stop event

    def runs(self, part: str) -> bool:
        return self.role in (part, "all")

    def _start_worker(self) -> None:
        # this service's earlier workers are dead by now (it starts one at a time): their studies
        # go back to the queue at once; another service's live claims stay where they are
        recovered = self.store.recover(self.claim_prefix)
        if recovered:
            logger.warning("studies claimed by a stopped worker queued again", extra={"studies": recovered})
        # a fresh stop event per worker: one killed while waiting on an event leaves it unusable
        # (its waiter count never drops), and setting it would then block the shutdown forever
        stop = self._mp.Event()
        metrics_port = (self.metrics_port + 1 if self.role == "all" else self.metrics_port) if self.metrics_port else 0
        process = self._mp.Process(
            target=_worker_main, name="mura-listener-worker", daemon=False,
            args=(str(self.config.path), stop, self.config.listener.log_format, self.claim_prefix,
                  f"{self.service_id}/worker", self.device, metrics_port),
        )
        process.start()
        self._worker = (process, stop)

    def _stop_worker(self) -> None:
        """Let the worker finish the study in hand, then end it."""
        if self._worker is None:
            return
        process, stop = self._worker
        stop.set()
        process.join(timeout=120)
        if process.is_alive():
            process.terminate()
            process.join()

    def _assemble(self) -> None:
        """Promotes each study when its ``stable_age_s`` has passed: sleeps until the next one is
        due (a study that starts meanwhile is due later than that), and at most a quarter of
        ``stable_age_s`` or a second, so that studies recorded by another front-end are seen."""
        stable = self.config.listener.stable_age_s
        longest = min(1.0, max(stable / 4, 0.05))
        wait_s = longest
        while not self.stop.wait(wait_s):
            wait_s = longest
            try:
                promoted = self.store.promote_stable(stable)
                due = self.store.next_stable_at(stable)
            except DATABASE_ERRORS as exc:  # the database away (a restart): try again next round
                logger.error("store unavailable", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            for _ in promoted:
                logger.info("study complete", extra={"stable_age_s": stable})
            if due is not None:  # a hair after it, so that the study's last_received <= now - stable
                wait_s = min(longest, max(due - time.time() + 0.002, 0.01))

    def run(self) -> int:
        settings = self.config.listener
        metrics = None
        if self.metrics_port and self.role != "worker":  # a worker role's metrics are its worker process's
            metrics = Metrics(self.role)
            metrics.watch_queue(self.store)
            metrics.serve(self.metrics_port)
        if self.runs("worker"):
            self._start_worker()
        scp, review, threads, beats = None, None, [], []
        if self.runs("scp"):
            spool = Spool(self.config.spool_dir, owner=f"{socket.gethostname()}-{settings.port}")
            scp = StorageSCP(self.config, self.store, spool, metrics=metrics)
            scp.start()
            threads.append(threading.Thread(target=self._assemble, name="assembly", daemon=True))
            beats.append(Heartbeat(self.store, f"{self.service_id}/scp", "scp",
                                   details=lambda: {"ae_title": settings.ae_title, "port": settings.port}))
            if self.config.review is not None:
                from listener.review.server import ReviewProcess

                review = ReviewProcess(self.config)
                review.start()
        if self.runs("exporter"):
            exporter = Exporter(self.config, self.store, exporter_id=f"{self.service_id}/exporter", metrics=metrics)
            threads.append(threading.Thread(target=exporter.run, args=(self.stop,), name="exporter", daemon=True))
            beats.append(Heartbeat(self.store, f"{self.service_id}/exporter", "exporter"))
        for thread in threads:
            thread.start()
        for beat in beats:
            beat.start()
        if scp is not None:
            logger.info("listening", extra={"ae_title": settings.ae_title, "port": settings.port,
                                            "spool": str(self.config.spool_dir), "role": self.role})
        else:
            logger.info("running", extra={"role": self.role, "id": self.service_id})
        try:
            while not self.stop.wait(1.0):
                if self._worker is not None and not self._worker[0].is_alive():
                    logger.error("worker process exited; restarting it", extra={"exitcode": self._worker[0].exitcode})
                    self._start_worker()
                if review is not None:
                    review.supervise()
        finally:
            logger.info("stopping: no new associations; finishing the study in hand")
            if review is not None:
                review.stop()
            if scp is not None:
                scp.stop()
            self._stop_worker()
            for thread in threads:
                thread.join(timeout=10)
            for beat in beats:
                beat.stop()
            if metrics is not None:
                metrics.stop()
            self.store.close()
        logger.info("stopped")
        return 0


def status_report(config: ListenerConfig) -> dict:
    """``status --json``: the running roles, the queue, and the studies."""
    store = open_store(config)
    counts, oldest = store.queue_summary()
    return {"roles": store.roles(),
            "queue": {"depth": counts, "oldest_waiting_s": None if oldest is None else max(0.0, time.time() - oldest)},
            "studies": status_rows(config, store)}


def status_rows(config: ListenerConfig, store: Store | None = None) -> list[dict]:
    """The studies the listener knows and where each stands, newest first (status command)."""
    store = store or open_store(config)
    rows = []
    for study in store.studies():
        outbox = store.outbox(study.key)
        rows.append({
            "study": study.study_uid,
            "calling_ae": study.calling_ae,
            "state": study.state,
            "version": study.version,
            "images": len(store.instances(study.key)),
            **({"body_part": study.result.body_part, "probability": study.result.probability,
                "abnormal": study.result.abnormal, "uncertain": study.result.uncertain} if study.result else
               dict.fromkeys(("body_part", "probability", "abnormal", "uncertain"))),
            "exports_pending": sum(o["state"] == ExportState.PENDING for o in outbox),
            "exports_sent": sum(o["state"] == ExportState.SENT for o in outbox),
            "reason": study.reason,
        })
    return rows
