"""The exporter: C-STORE of every outbox file to its destination, retried until the PACS takes it.

The outbox is a table in the store, so nothing waits only in memory: a PACS down for an hour, or
a listener restarted meanwhile, delays results and loses none. Retries back off exponentially
(``retry_initial_s`` doubling up to ``retry_max_s``); a file still refused ``give_up_after_s``
after it was queued is given up with a log line and its study marked failed.

Several exporters may share one outbox (``mura-listener serve --role exporter`` on more than one
host): each claims the rows it is about to send for ``[store] lease_s`` (:meth:`Store.due_exports`),
so a file is sent by one of them; the rows of an exporter that died are sent by another once its
lease has run out.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from listener.config import Destination, ListenerConfig
from listener.database import DATABASE_ERRORS
from listener.metrics import Metrics
from listener.paths import log_ref
from listener.store import Export, Store

__all__ = ["Exporter", "destination_key", "next_attempt"]

logger = logging.getLogger("listener.exporter")

# a warning (e.g. 0xB000 coercion of data elements) still means the PACS stored the file
_DELIVERED = (STATUS_SUCCESS, STATUS_WARNING)


def destination_key(destination: Destination) -> str:
    """How the outbox names a destination: ``AE@host:port``."""
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def next_attempt(destination: Destination, attempts: int, created_at: float, now: float) -> float | None:
    """When to try again after ``attempts`` failures, or None once the give-up time has passed."""
    if now - created_at >= destination.give_up_after_s:
        return None
    return now + min(destination.retry_max_s, destination.retry_initial_s * 2 ** attempts)


class Exporter:
    def __init__(self, config: ListenerConfig, store: Store, exporter_id: str = "exporter",
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.exporter_id = exporter_id
        self.metrics = metrics
        self.destinations = {destination_key(d): d for d in config.destinations}

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Between rounds, waits for the store's "outbox" notification (PostgreSQL) or ``poll_s``,
        whichever comes first; a database that is away is waited for: this thread is not
        restarted if it ends."""
        while not stop.is_set():
            try:
                sent = self.run_once()
            except DATABASE_ERRORS as exc:
                logger.error("store unavailable", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                sent = 0
            if not sent:
                self.store.wait("outbox", poll_s, stop)

    def run_once(self, now: float | None = None) -> int:
        """Send what is due (one association per destination); returns how many were stored."""
        now = time.time() if now is None else now
        by_destination: dict[str, list[Export]] = defaultdict(list)
        claimed_at = time.monotonic()
        for export in self.store.due_exports(now, exporter_id=self.exporter_id, lease_s=self.config.store.lease_s):
            by_destination[export.destination].append(export)
        sent = 0
        for key, exports in by_destination.items():
            destination = self.destinations.get(key)
            if destination is None:  # removed from listener.toml since: nothing will ever take it
                for export in exports:
                    self._failed(export, None, "destination no longer configured", now)
                continue
            sent += self._send(destination, exports, now, claimed_at)
        return sent

    def _send(self, destination: Destination, exports: list[Export], now: float, claimed_at: float) -> int:
        datasets = []
        for export in exports:
            try:
                datasets.append((export, pydicom.dcmread(export.path)))
            except (OSError, InvalidDicomError) as exc:
                self._failed(export, None, f"outbox file unreadable ({type(exc).__name__})", now)
        if not datasets:
            return 0
        ae = AE(ae_title=destination.calling_ae_title or self.config.listener.ae_title)
        for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}):
            ae.add_requested_context(sop_class, syntax)
        assoc: Association | None = None
        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        except Exception as exc:  # network errors: the PACS is down or unreachable
            error = type(exc).__name__
        else:
            error = "association rejected or aborted" if not assoc.is_established else ""
        if assoc is None or not assoc.is_established:
            for export, _ in datasets:
                self._failed(export, destination, error, now)
            return 0
        sent = 0
        try:
            for k, (export, ds) in enumerate(datasets):
                # the claim on these rows runs out lease_s after it was taken: a file not started well
                # before then may be another exporter's already, so the round stops (after one file at
                # least, so that a slow PACS still makes progress) and leaves the rest to the next claim
                if k and time.monotonic() > claimed_at + 0.8 * self.config.store.lease_s:
                    logger.warning("export round stopped: its claim is running out", extra={
                        "destination": destination_key(destination), "left": len(datasets) - sent})
                    break
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code is not None and code_to_category(code) in _DELIVERED:
                    self.store.export_done(export.id, now)
                    sent += 1
                    if self.metrics is not None:
                        self.metrics.exports.labels(export.destination).inc()
                    logger.info("result sent", extra={"destination": destination_key(destination),
                                                      "study_ref": log_ref(export.study_key), "outbox_id": export.id})
                else:
                    reason = f"C-STORE status 0x{code:04X}" if code is not None else "no C-STORE response"
                    self._failed(export, destination, reason, now)
        finally:
            assoc.release()
        return sent

    def _failed(self, export: Export, destination: Destination | None, reason: str, now: float) -> None:
        retry_at = next_attempt(destination, export.attempts, export.created_at, now) if destination else None
        self.store.export_failed(export.id, reason, retry_at, now)
        if self.metrics is not None:
            self.metrics.export_failures.labels(export.destination).inc()
        extra = {"destination": export.destination, "study_ref": log_ref(export.study_key), "outbox_id": export.id,
                 "reason": reason, "attempts": export.attempts + 1}
        if retry_at is None:
            logger.error("result given up", extra=extra)
        else:
            logger.warning("result not sent; will retry", extra=extra | {"retry_in_s": round(retry_at - now, 1)})
