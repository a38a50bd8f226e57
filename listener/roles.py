"""The parts of the service as roles that run apart: ``scp`` front-ends, analysis ``worker``\\ s
and ``exporter``\\ s, as many of each as the load needs, on one shared database.

Each running role says it is alive in the store's ``roles`` table every :data:`BEAT_S` seconds
from a thread of the process that does the work (the worker's from the worker process, not from
the service that supervises it, so that a hung worker falls silent rather than being vouched
for). A role that ends cleanly marks its row stopped; one that missed three beats is shown as
silent by ``mura-listener status``: dead, hung, or cut off from the database.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from listener.database import DATABASE_ERRORS
from listener.store import Store

__all__ = ["BEAT_S", "ROLES", "Heartbeat", "default_id"]

logger = logging.getLogger("listener.roles")

ROLES = ("scp", "worker", "exporter", "all")
BEAT_S = 5.0


def default_id() -> str:
    """A service's id unless ``--worker-id`` names one: unique while it runs, not across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Beats for one role from a thread of its own until :meth:`stop`, which marks it stopped."""

    def __init__(self, store: Store, role_id: str, role: str, device: str = "",
                 details: Callable[[], dict] | None = None, beat_s: float = BEAT_S) -> None:
        self.store, self.role_id, self.role, self.device = store, role_id, role, device
        self.details = details or dict
        self.beat_s = beat_s
        self.started_at = time.time()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()  # the row is there before the role reports ready
        self._thread.start()
        return self

    def _beat(self, stopped: bool = False) -> None:
        try:
            self.store.beat(self.role_id, self.role, socket.gethostname(), os.getpid(), self.device, self.details(),
                            beat_s=self.beat_s, started_at=self.started_at, stopped=stopped)
        except DATABASE_ERRORS as exc:  # a missed beat shows as one; the role itself goes on
            logger.warning("heartbeat not written", extra={"role": self.role, "error": type(exc).__name__})

    def _run(self) -> None:
        try:
            while not self._done.wait(self.beat_s):
                self._beat()
        finally:
            self.store.close()  # this thread's connection

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        self._beat(stopped=True)
