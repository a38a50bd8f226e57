"""Labels of the review: the model's finding (tag ``original``) and the reviewer's (tag ``final``).

They live in the listener's own database (:func:`listener.paths.store_url`; the table is made by
:mod:`listener.migrations`) beside the studies they label, so a backup holds the results and the
corrections together. Nothing is updated in place: a reviewer who changes their mind adds a row, the latest
row of a tag wins, and the history of who said what when stays for audit and for the agreement
table.

A label names a study, or one image of it (``sop_instance_uid``); MURA labels studies, so the
study's own label is what the worklist, the export and the SR use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from listener.store import Store

__all__ = ["ATTRIBUTION_UNATTRIBUTED", "FINDINGS", "TAGS", "Label", "LabelStore", "review_state"]

TAGS = ("original", "final")
FINDINGS = ("abnormal", "normal")
ATTRIBUTION_UNATTRIBUTED = "unattributed API client"

# "the same image": both NULL is a match (a study-level label), which ``=`` never is
_SAME = {"sqlite": "IS", "postgresql": "IS NOT DISTINCT FROM"}


@dataclass
class Label:
    id: int
    study_key: str
    sop_instance_uid: str | None
    tag: str
    finding: str
    probability: float | None
    reviewer: str | None
    comment: str | None
    analysis_version: int | None
    created_at: float
    client_id: str | None = None
    reviewer_name: str | None = None   # the reviewer's full name when the label was saved (the SR's observer)

    @property
    def unattributed(self) -> bool:
        """A final label saved by a program that named no person (MONAI Label's client and its
        OHIF and Slicer plugins send none): kept, and said to be nobody's rather than guessed."""
        return self.tag == "final" and not self.reviewer

    def as_dict(self) -> dict:
        """The label as the API shows it (the study key stays inside: it holds a UID)."""
        return {"tag": self.tag, "finding": self.finding, "abnormal": self.finding == "abnormal",
                "probability": self.probability, "reviewer": self.reviewer,
                "reviewer_name": self.reviewer_name or self.reviewer, "comment": self.comment,
                "analysis_version": self.analysis_version, "time": self.created_at,
                "attribution": (ATTRIBUTION_UNATTRIBUTED if self.unattributed
                                else "model" if self.tag == "original" else "reviewer"),
                "client_id": self.client_id}


def _label(row) -> Label:
    return Label(**{k: row[k] for k in row.keys()})


def review_state(original: Label | None, final: Label | None) -> str:
    """``unreviewed``, ``accepted`` (the reviewer agreed with the model) or ``overridden``."""
    if final is None:
        return "unreviewed"
    if original is None or original.finding == final.finding:
        return "accepted"
    return "overridden"


class LabelStore:
    """The ``labels`` table of a listener :class:`~listener.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, study_key: str, tag: str, finding: str, *, sop_instance_uid: str | None = None,
            probability: float | None = None, reviewer: str | None = None, comment: str | None = None,
            analysis_version: int | None = None, now: float | None = None, unattributed: bool = False,
            client_id: str | None = None, reviewer_name: str | None = None) -> Label:
        """A final label names its reviewer, or says ``unattributed=True`` (an API client that
        named nobody): no final label is anonymous by accident."""
        if tag not in TAGS:
            raise ValueError(f"label tag must be one of {TAGS}, got {tag!r}")
        if finding not in FINDINGS:
            raise ValueError(f"finding must be one of {FINDINGS}, got {finding!r}")
        reviewer = (reviewer or "").strip() or None
        if tag == "final" and reviewer is None and not unattributed:
            raise ValueError("a final label needs the reviewer who gave it, or to be saved as unattributed")
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            (label_id,) = db.execute(
                "INSERT INTO labels (study_key, sop_instance_uid, tag, finding, probability, reviewer, comment, "
                "analysis_version, created_at, client_id, reviewer_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (study_key, sop_instance_uid, tag, finding, probability, reviewer, comment or None, analysis_version,
                 now, (client_id or "")[:64] or None, (reviewer_name or "").strip()[:128] or None)).fetchall()[0]
            # read back rather than RETURNING *: SQLite's RETURNING gives a REAL column's 2.0 as the integer 2
            row = db.execute("SELECT * FROM labels WHERE id=?", (label_id,)).fetchone()
        return _label(row)

    def latest(self, study_key: str, tag: str, sop_instance_uid: str | None = None) -> Label | None:
        row = self.store.connection().execute(
            f"SELECT * FROM labels WHERE study_key=? AND tag=? AND sop_instance_uid {_SAME[self.store.dialect]} ? "
            "ORDER BY id DESC LIMIT 1",
            (study_key, tag, sop_instance_uid)).fetchone()
        return _label(row) if row else None

    def history(self, study_key: str) -> list[Label]:
        """Every label of the study and its images, oldest first."""
        rows = self.store.connection().execute("SELECT * FROM labels WHERE study_key=? ORDER BY id", (study_key,))
        return [_label(r) for r in rows]

    def latest_study_labels(self) -> dict[tuple[str, str], Label]:
        """The latest study-level label per ``(study_key, tag)``, all studies in one query (worklist)."""
        rows = self.store.connection().execute(
            "SELECT * FROM labels WHERE id IN (SELECT MAX(id) FROM labels WHERE sop_instance_uid IS NULL "
            "GROUP BY study_key, tag)")
        return {(r["study_key"], r["tag"]): _label(r) for r in rows}

    def record_originals(self) -> int:
        """Give every analysed study whose current analysis has no ``original`` label one, from
        the model's result; returns how many were added. Idempotent, so any reader may call it
        (the worker stays unaware of the review)."""
        if not self._unlabelled_analyses():
            return 0  # the common case, without taking the write lock
        added = 0
        with self.store.transaction() as db:
            for key in self._unlabelled_analyses():  # again, under the lock: another reader may have added them
                study = self.store.study(key)
                result = study.result if study else None
                if result is None:
                    continue
                db.execute("INSERT INTO labels (study_key, tag, finding, probability, analysis_version, created_at) "
                           "VALUES (?, 'original', ?, ?, ?, ?)",
                           (key, result.finding, result.probability, result.analysis_version, time.time()))
                added += 1
        return added

    def _unlabelled_analyses(self) -> list[str]:
        """Keys of the studies whose current analysis has no study-level ``original`` label."""
        labelled = {(r[0], r[1]) for r in self.store.connection().execute(
            "SELECT study_key, analysis_version FROM labels WHERE tag='original' AND sop_instance_uid IS NULL")}
        return [key for key, version in self.store.analysis_versions().items() if (key, version) not in labelled]
