"""Service paths and references: where the listener keeps things, and the short hashes that name them.

UIDs name patients' studies, so they never appear in file names, folder names, URLs or log lines;
a truncated SHA-256 of the UID (or study key) stands in for them. Each length below is already on
disk (spool and results folders) or in URLs and browser histories (review ids): changing one
orphans what was written under the old one, so they are constants here and nowhere else.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from listener.config import ListenerConfig

__all__ = [
    "DATABASE_NAME", "LOG_REF_LENGTH", "RESULTS_REF_LENGTH", "REVIEW_ID_LENGTH", "SPOOL_NAME_LENGTH",
    "analysis_dir", "database_path", "log_ref", "results_ref", "review_dir", "review_ref", "short_ref",
    "spool_name", "store_url",
]

SPOOL_NAME_LENGTH = 24   # received instances: spool/instances/<study>/<instance>.dcm
RESULTS_REF_LENGTH = 16  # a study's results folder: spool/results/<ref>/
REVIEW_ID_LENGTH = 16    # study and image ids in the review app's URLs (after their s / i prefix)
LOG_REF_LENGTH = 12      # ``study_ref`` in log lines

DATABASE_NAME = "queue.sqlite3"


def short_ref(text: str, length: int) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def spool_name(uid: str) -> str:
    return short_ref(uid, SPOOL_NAME_LENGTH)


def results_ref(study_key: str) -> str:
    return short_ref(study_key, RESULTS_REF_LENGTH)


def review_ref(text: str) -> str:
    return short_ref(text, REVIEW_ID_LENGTH)


def log_ref(study_key: str) -> str:
    """A log line's reference to a study: the prefix of its results folder's name, so that an
    operator can go from the one to the other."""
    return short_ref(study_key, LOG_REF_LENGTH)


def database_path(spool_dir: Path) -> Path:
    """The store's database: in the spool, so that one backup holds images, results and labels."""
    return Path(spool_dir) / DATABASE_NAME


def store_url(config: ListenerConfig) -> str:
    """What :class:`listener.store.Store` opens for this config: ``[store] url`` when set (a
    PostgreSQL server several hosts share), else the SQLite file in the spool."""
    return config.store.url or str(database_path(config.spool_dir))


def analysis_dir(spool_dir: Path, study_key: str, version: int) -> Path:
    """What the worker wrote for analysis ``version`` of a study (heatmaps, SR, SCs)."""
    return Path(spool_dir) / "results" / results_ref(study_key) / f"v{version}"


def review_dir(spool_dir: Path, study_key: str, instance_number: int) -> Path:
    """A reviewer's corrected SR of a study, by the SR's InstanceNumber."""
    return Path(spool_dir) / "results" / results_ref(study_key) / f"review{instance_number}"
