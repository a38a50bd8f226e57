"""The service's child processes (worker, review app) end with the service.

A service killed with SIGKILL, or by the OOM killer, cannot tell its children to stop; without
this they would live on as orphans: a worker still claiming studies beside the restarted
service's own, a review app holding its port so the new one cannot bind.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
from multiprocessing.connection import wait

__all__ = ["stop_when_parent_dies"]

logger = logging.getLogger("listener")


def stop_when_parent_dies(stop) -> None:
    """Set ``stop`` (an event the child's main loop honours) when the parent process is gone.

    Waits on the parent's sentinel, which the operating system closes when the parent exits, so
    nothing is polled. A study being analysed is finished first; the store keeps the rest.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        logger.warning("the listener service is gone; stopping")
        stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
