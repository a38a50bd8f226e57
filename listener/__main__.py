"""``mura-listener --config listener.toml`` (also ``python -m listener``).

The DICOM listener (C-STORE SCP, spool, study assembly, worker, exporter) is not built yet:
it is tracked as its own issue. Until then this entry point says so and exits with status 2,
rather than pretending to listen.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mura-listener", description="mura-monai DICOM listener")
    parser.add_argument("--config", required=True, help="listener.toml")
    return parser


def main(args: list[str] | None = None) -> int:
    _setup_argparser().parse_args(args)
    print("mura-listener: error: the DICOM listener is not implemented in this version yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
