"""The running service: SCP, study assembly, a supervised worker process, the exporter, and the
review app's process when listener.toml has a ``[review]`` table.

Everything meets in the store (:mod:`listener.store`), so the parts share no memory: the SCP
threads record instances, the assembly loop marks studies complete after ``stable_age_s``, the
worker process analyses them, the exporter sends what the worker wrote. A worker that dies is
restarted and its study claimed again; SIGTERM stops accepting associations first, then lets the
worker finish the study in hand.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

from listener.config import ListenerConfig, load_config
from listener.exporter import Exporter
from listener.paths import store_url
from listener.processes import stop_when_parent_dies
from listener.scp import StorageSCP
from listener.spool import Spool
from listener.store import ExportState, Store
from listener.worker import worker_prefix

__all__ = ["ListenerService", "open_store", "status_rows"]

logger = logging.getLogger("listener.service")


def open_store(config: ListenerConfig) -> Store:
    return Store(store_url(config))


def _worker_main(config_path: str, stop, log_format: str) -> None:
    """Entry point of the worker process (spawned: no torch state inherited from the parent)."""
    from listener.logs import setup_logging
    from listener.worker import Worker

    setup_logging(log_format)
    stop_when_parent_dies(stop)
    config = load_config(config_path)
    worker = Worker(config, open_store(config))
    logging.getLogger("listener.worker").info("worker ready", extra={"bundle": str(config.resolve(config.model.bundle))})
    worker.run(stop)


class ListenerService:
    """``run()`` blocks until ``stop`` is set (SIGTERM / SIGINT in :mod:`listener.__main__`)."""

    def __init__(self, config: ListenerConfig) -> None:
        if config.path is None:
            raise ValueError("the service needs a config loaded from a file (the worker process reads it)")
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.store = open_store(config)
        self.stop = threading.Event()
        self._mp = multiprocessing.get_context("spawn")
        self._worker: tuple[BaseProcess, EventType] | None = None  # the process and its own stop event

    def _start_worker(self) -> None:
        # this service's earlier workers are dead by now (it starts one at a time): their studies
        # go back to the queue at once; another host's live claims stay where they are
        recovered = self.store.recover(worker_prefix(self.config))
        if recovered:
            logger.warning("studies claimed by a stopped worker queued again", extra={"studies": recovered})
        # a fresh stop event per worker: one killed while waiting on an event leaves it unusable
        # (its waiter count never drops), and setting it would then block the shutdown forever
        stop = self._mp.Event()
        process = self._mp.Process(
            target=_worker_main, args=(str(self.config.path), stop, self.config.listener.log_format),
            name="mura-listener-worker", daemon=False,
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
        stable = self.config.listener.stable_age_s
        while not self.stop.wait(min(1.0, max(stable / 4, 0.05))):
            for _ in self.store.promote_stable(stable):
                logger.info("study complete", extra={"stable_age_s": stable})

    def run(self) -> int:
        self._start_worker()
        scp = StorageSCP(self.config, self.store, self.spool)
        scp.start()
        exporter = Exporter(self.config, self.store)
        threads = [threading.Thread(target=self._assemble, name="assembly", daemon=True),
                   threading.Thread(target=exporter.run, args=(self.stop,), name="exporter", daemon=True)]
        for thread in threads:
            thread.start()
        review = None
        if self.config.review is not None:
            from listener.review.server import ReviewProcess

            review = ReviewProcess(self.config)
            review.start()
        settings = self.config.listener
        logger.info("listening", extra={"ae_title": settings.ae_title, "port": settings.port,
                                        "spool": str(self.config.spool_dir)})
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
            scp.stop()
            self._stop_worker()
            for thread in threads:
                thread.join(timeout=10)
            self.store.close()
        logger.info("stopped")
        return 0


def status_rows(config: ListenerConfig) -> list[dict]:
    """The studies the listener knows and where each stands, newest first (status command)."""
    store = open_store(config)
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
