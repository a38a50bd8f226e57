"""``mura-listener --config listener.toml`` (also ``python -m listener``), and ``status``.

``mura-listener [serve] --config listener.toml`` runs the service until SIGTERM or Ctrl-C;
``mura-listener status --config listener.toml [--json]`` lists the studies and their state
(received, waiting, analysing, analysed, sent, failed) from the spool's database;
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


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mura-listener", description="mura-monai DICOM listener")
    parser.add_argument("command", nargs="?", choices=["serve", "status", "export-labels"], default="serve",
                        help="serve (default): run the service; status: list studies and their state; "
                             "export-labels: the reviewed studies as a MURA root, with an agreement table")
    parser.add_argument("out", nargs="?", type=Path,
                        help="export-labels: folder to write MURA-v1.1/, agreement.csv and agreement.md in")
    parser.add_argument("--config", required=True, help="listener.toml")
    parser.add_argument("--json", action="store_true", help="status: print JSON instead of a table")
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


def _status(config, as_json: bool) -> int:
    from listener.service import status_rows

    rows = status_rows(config)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("study", "calling_ae", "state", "version", "images", "body_part", "probability", "abnormal", "uncertain",
               "exports_pending", "reason")
    table = [columns] + [tuple("" if r[c] is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                               for c in columns) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
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
        return _status(config, parsed.json)
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
    service = ListenerService(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop.set())
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
