"""Serving the review app: ``mura-review --config listener.toml`` alone, or beside the listener.

Beside the listener it runs in a process of its own (spawned, like the worker): ``/infer`` loads
torch and the networks, which the process holding the DICOM associations must not, and a crash
in the web stack must not take the SCP down. uvicorn's own access log is off: its lines would
carry query strings (the sign-in token among them).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from listener.config import ListenerConfig, ReviewSettings, load_config
from listener.processes import stop_when_parent_dies

__all__ = ["ReviewProcess", "effective_host", "main", "make_server", "tls_files"]

logger = logging.getLogger("listener.review")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def effective_host(settings: ReviewSettings, sign_in: bool | None = None) -> str:
    """With no way to sign in (no account, no shared token, no sign-on) nobody but this machine
    may connect. ``sign_in`` None: judged from ``settings`` alone (accounts live in the database)."""
    if sign_in is None:
        sign_in = bool(settings.token or settings.oidc)
    if sign_in:
        return settings.host
    if settings.host not in _LOOPBACK:
        logger.warning("review app has no account, token or sign-on: listening on 127.0.0.1 only, not on the "
                       "configured host; add one with 'mura-review users add'", extra={"configured_host": settings.host})
        return "127.0.0.1"
    logger.warning("review app has no account, token or sign-on: listening on 127.0.0.1 only")
    return settings.host


def tls_files(config: ListenerConfig, settings: ReviewSettings) -> tuple[Path, Path] | None:
    """The certificate and key the app serves HTTPS with: its own, else the listener's (one
    certificate for the machine's DICOM and web ports is what a hospital's PKI usually issues);
    ``None`` with ``tls = false`` or no certificate configured."""
    if not settings.tls:
        return None
    for cert, key in ((settings.tls_cert, settings.tls_key), (config.listener.tls_cert, config.listener.tls_key)):
        if cert and key:
            return config.resolve(cert), config.resolve(key)
    return None


def make_server(config: ListenerConfig, settings: ReviewSettings | None = None):
    """A ``uvicorn.Server`` for the app of ``config`` (not started)."""
    import uvicorn

    from listener.review.app import create_app

    settings = settings or config.review or ReviewSettings()
    app = create_app(config, settings)
    sign_in = not app.state.auth.started_open
    host = effective_host(settings, sign_in)
    tls = tls_files(config, settings)
    if tls is None and host not in _LOOPBACK:  # passwords and session cookies would cross the network readable
        why = "[review] tls = false" if not settings.tls else "no tls_cert and tls_key in [review] or [listener]"
        logger.warning("review app serves plain HTTP beyond this machine", extra={"why": why})
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=settings.port,
                                           access_log=False, log_config=None, lifespan="on",
                                           ssl_certfile=str(tls[0]) if tls else None,
                                           ssl_keyfile=str(tls[1]) if tls else None))
    scheme = "https" if tls else "http"
    logger.info("review app", extra={"url": f"{scheme}://{host}:{settings.port}/", "sign_in": sign_in})
    return server


def _process_main(config_path: str, stop, log_format: str) -> None:
    """Entry point of the review process the listener starts (spawned)."""
    from listener.logs import setup_logging

    setup_logging(log_format)
    stop_when_parent_dies(stop)
    server = make_server(load_config(config_path))

    def watch() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=watch, name="review-stop", daemon=True).start()
    _run(server)


def _run(server) -> None:
    """uvicorn stops gracefully on SIGINT / SIGTERM, then raises the signal again for the handler
    it found; a no-op handler makes that a clean exit (status 0, no traceback)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    server.run()


class ReviewProcess:
    """The review app beside the listener; :meth:`stop` lets uvicorn finish open requests."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self._mp = multiprocessing.get_context("spawn")
        self._stop: EventType | None = None
        self.process: BaseProcess | None = None
        self._started_at = 0.0
        self._restarts = 0

    def start(self) -> None:
        stop = self._mp.Event()  # a fresh event per process (see the worker's in service.py)
        process = self._mp.Process(target=_process_main, name="mura-review",
                                   args=(str(self.config.path), stop, self.config.listener.log_format))
        process.start()
        self._stop, self.process = stop, process
        self._started_at = time.monotonic()

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def supervise(self) -> None:
        """Restart an app that exited, backing off while it keeps exiting (a port in use)."""
        if self.process is None or self.process.is_alive():
            return
        if time.monotonic() - self._started_at < min(60.0, 2.0 ** self._restarts):
            return
        self._restarts += 1
        logger.error("review app exited; restarting it", extra={"exitcode": self.process.exitcode,
                                                                "restarts": self._restarts})
        self.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self._stop is None:
            return
        self._stop.set()
        self.process.join(timeout=timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def _setup_argparser() -> argparse.ArgumentParser:
    from listener.review.admin_cli import add_subcommands

    parser = argparse.ArgumentParser(prog="mura-review", description="mura-monai review web app (MONAI Label API), "
                                     "its accounts and its audit trail")
    parser.add_argument("--config", default="listener.toml", help="listener.toml (default: the one in this folder)")
    # --config also after the subcommand (mura-review users add NAME --config FILE)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="listener.toml")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the review app (the default)", parents=[common])
    add_subcommands(sub, [common])
    return parser


def main(args: list[str] | None = None) -> int:
    parsed = _setup_argparser().parse_args(args)
    from listener.config import ConfigError
    from listener.logs import setup_logging

    try:
        config = load_config(parsed.config)
    except ConfigError as exc:
        print(f"mura-review: error: {exc}", file=sys.stderr)
        return 2
    if parsed.command not in (None, "serve"):
        from listener.review.admin_cli import run

        return run(config, parsed)
    setup_logging(config.listener.log_format)
    if config.review is None:
        logger.info("no [review] table in the config: defaults (127.0.0.1:8000, no token)")
    _run(make_server(config))  # SIGINT and SIGTERM: open requests finish first
    return 0


if __name__ == "__main__":
    sys.exit(main())
