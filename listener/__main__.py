"""``mura-listener --config listener.toml`` (also ``python -m listener``), and ``status``.

``mura-listener [serve] --config listener.toml`` runs the service until SIGTERM or Ctrl-C; with
``--role scp|worker|exporter`` only that part of it (front-end, analysis worker, exporter), so that
each can run on hosts of their own around one PostgreSQL store (``--worker-id``, ``--device`` and
``--metrics-port`` name, place and expose it);
``mura-listener status --config listener.toml [--json] [--roles]`` lists the running roles and
their heartbeats, the queue, and the studies and their state (received, waiting, analysing,
analysed, sent, failed) from the store;
``mura-listener export-labels --config listener.toml OUT`` writes the reviewed studies as a MURA
root with the agreement table, so the corrections train the next models. It lives here, not in
``mura-monai``, because the library never imports the service.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

__all__ = ["main"]


ROLES = ("scp", "worker", "exporter", "all")  # listener.roles.ROLES, without importing the service for --help


def _device(value: str) -> str:
    if value in ("cpu", "cuda", "auto") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {value!r}")


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mura-listener", description="mura-monai DICOM listener")
    parser.add_argument("command", nargs="?", choices=["serve", "status", "export-labels"], default="serve",
                        help="serve (default): run the service; status: list studies and their state; "
                             "export-labels: the reviewed studies as a MURA root, with an agreement table")
    parser.add_argument("out", nargs="?", type=Path,
                        help="export-labels: folder to write MURA-v1.1/, agreement.csv and agreement.md in")
    parser.add_argument("--config", required=True, help="listener.toml")
    parser.add_argument("--json", action="store_true", help="status: print JSON instead of a table")
    parser.add_argument("--roles", action="store_true", help="status: only the roles and the queue, not the studies")
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="serve: all (default: SCP, assembly, worker, exporter, review app), or scp (SCP, study "
                             "assembly, review app), worker (the analysis worker process) or exporter alone")
    parser.add_argument("--worker-id", default=None,
                        help="serve: this service's id in the roles table and its workers' claims (default: "
                             "<host>:<pid>); a stable one lets a restarted worker release its dead claims at once")
    parser.add_argument("--device", type=_device, default=None,
                        help="serve: cpu, cuda, cuda:N or auto, replacing [model] device for this service's worker")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve: Prometheus /metrics on this port (default: [listener] metrics_port; 0: off)")
    parser.add_argument("--valid-fraction", type=float, default=0.2,
                        help="export-labels: share of patients in the valid split (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="export-labels: seed of the split by patient (default 0)")
    return parser


def _export_labels(config, out: Path | None, valid_fraction: float, seed: int) -> int:
    from listener.review.export import export_labels

    if out is None:
        raise ValueError("export-labels needs the folder to write to: mura-listener export-labels --config FILE OUT")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    summary = export_labels(config, out, valid_fraction=valid_fraction, seed=seed)
    _audit_export(config, out, summary.pop("study_ids"))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _audit_export(config, out: Path, study_ids: list[str]) -> None:
    """Labels and images leaving the system are an export the audit trail names, with who ran it."""
    import getpass

    from listener.config import ReviewSettings
    from listener.paths import store_url
    from listener.review.app import audit_log_path
    from listener.review.audit import AuditLog
    from listener.store import Store

    store = Store(store_url(config))
    try:
        AuditLog(store, audit_log_path(config, config.review or ReviewSettings())).record(
            "export", f"cli:{getpass.getuser()}", folder=str(Path(out).resolve()), studies=study_ids)
    finally:
        store.close()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = [columns, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _status(config, as_json: bool, roles_only: bool = False) -> int:
    from listener.service import status_report

    report = status_report(config)
    if roles_only:
        report.pop("studies")
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    _table(("role", "id", "host", "pid", "device", "last_beat", "state"),
           [(r["role"], r["id"], r["host"], str(r["pid"]), r["device"], _age(r["age_s"]) + " ago", r["state"])
            for r in report["roles"]])
    queue = report["queue"]
    depth = ", ".join(f"{state} {count}" for state, count in queue["depth"].items())
    oldest = queue["oldest_waiting_s"]
    print(f"\nqueue: {depth}; oldest waiting: {_age(oldest) if oldest is not None else 'none'}")
    if roles_only:
        return 0
    print()
    columns = ("study", "calling_ae", "state", "version", "images", "body_part", "probability", "abnormal", "uncertain",
               "exports_pending", "reason")
    _table(columns, [tuple("" if r[c] is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                           for c in columns) for r in report["studies"]])
    return 0


def main(args: list[str] | None = None) -> int:
    parsed = _setup_argparser().parse_intermixed_args(args)  # OUT may come after --config
    from listener.config import ConfigError, load_config

    try:
        config = load_config(parsed.config)
    except ConfigError as exc:
        print(f"mura-listener: error: {exc}", file=sys.stderr)
        return 2
    if parsed.command == "status":
        return _status(config, parsed.json, parsed.roles)
    if parsed.command == "export-labels":
        try:
            return _export_labels(config, parsed.out, parsed.valid_fraction, parsed.seed)
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            print(f"mura-listener export-labels: error: {exc}", file=sys.stderr)
            return 2
    if parsed.out is not None:
        print(f"mura-listener {parsed.command}: error: unexpected argument {parsed.out}", file=sys.stderr)
        return 2
    from listener.logs import setup_logging
    from listener.service import ListenerService

    setup_logging(config.listener.log_format)
    service = ListenerService(config, role=parsed.role, service_id=parsed.worker_id, device=parsed.device,
                              metrics_port=parsed.metrics_port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop.set())
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
