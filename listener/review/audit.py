"""The review app's audit trail: who signed in, who opened which study, who saved which label, each
export and each account change.

A hospital has to answer "who saw or changed this, and when" long after the fact, so the trail is
kept twice. The authority is the ``audit`` table in the listener's own database (one database, one
backup with the labels it explains); triggers refuse UPDATE and DELETE on it, so that the app
itself, or someone with a database shell being careless, cannot rewrite history. Someone who drops
the triggers can, so every row also carries a SHA-256 over its contents and the previous row's
hash: :meth:`AuditLog.verify` then shows which row was changed or where rows went missing. The same
entries are appended as JSON lines to a file that can be shipped to a log collector outside this
machine, out of reach of anyone who can edit the database.

No patient data goes in: a study is named by the review app's study id (a hash, see
:mod:`listener.paths`), never by its UID, the patient's name or an accession number, because the
trail is read by people (auditors, IT) who are not entitled to those and is copied to places
(collectors, tickets) that are not protected like the PACS is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from listener.store import Store

__all__ = ["EVENTS", "AuditEntry", "AuditLog", "format_entries", "parse_time"]

logger = logging.getLogger("listener.review")

EVENTS = ("sign_in", "sign_in_failed", "sign_out", "session_expired", "access_denied", "study_opened", "label_saved",
          "upload", "export", "user_added", "user_changed", "user_disabled", "user_enabled", "password_changed",
          "token_created", "token_revoked")

APPEND_ONLY = "the audit trail is append-only"
GENESIS = "0" * 64  # the previous hash of the first row: deleting the first rows breaks the chain too

# the triggers :mod:`listener.migrations` puts on the table (PostgreSQL's TRUNCATE skips row triggers)
_TRIGGERS = {"sqlite": ("audit_no_update", "audit_no_delete"),
             "postgresql": ("audit_no_update", "audit_no_delete", "audit_no_truncate")}
_TRIGGERS_PRESENT = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='audit'",
    "postgresql": "SELECT tgname AS name FROM pg_trigger WHERE tgrelid='audit'::regclass AND NOT tgisinternal",
}
# the highest id the table ever handed out, rows deleted since or not: AUTOINCREMENT's counter on
# SQLite, the identity column's sequence on PostgreSQL (NULL before the first row on both)
_LAST_ID = {
    "sqlite": "SELECT seq FROM sqlite_sequence WHERE name='audit'",
    "postgresql": "SELECT pg_sequence_last_value(pg_get_serial_sequence('audit', 'id'))",
}
# an id given explicitly does not move PostgreSQL's sequence (SQLite's counter follows any insert)
_ADVANCE = {"sqlite": None, "postgresql": "SELECT setval(pg_get_serial_sequence('audit', 'id'), ?)"}

# a DICOM UID (five or more numeric components from root 0, 1 or 2): refused in details, since it
# names a patient's study; IPv4 addresses and version numbers have fewer components
_UID = re.compile(r"[0-2](\.(0|[1-9][0-9]*)){4,}")
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([mhd])")
_AGE_SECONDS = {"m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME_FORMS = ("a date (2026-11-29), a date and time (2026-11-29T08:00, local time unless it ends in Z or an offset "
               "such as +01:00) or an age (90m, 24h, 7d)")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    actor: str | None
    event: str
    outcome: str
    client: str | None
    detail: dict
    hash: str

    def as_dict(self) -> dict:
        """The entry as a JSON line and the API show it; ``at`` is for people and for log
        collectors that do not read epoch seconds, ``time`` is what the hash covers."""
        return {"id": self.id, "time": self.time, "at": _utc_iso(self.time), "actor": self.actor, "event": self.event,
                "outcome": self.outcome, "client": self.client,
                "detail": {key: list(value) if isinstance(value, list) else value for key, value in self.detail.items()},
                "hash": self.hash}


def _utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical(value) -> str:
    """One spelling per value (sorted keys, no spaces, no NaN), so that the hash computed when a
    row is written is the one recomputed from the row read back years later."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _row_hash(id: int, time: float, actor: str | None, event: str, outcome: str, client: str | None, detail: dict,
              prev_hash: str) -> str:
    row = {"id": id, "time": time, "actor": actor, "event": event, "outcome": outcome, "client": client,
           "detail": detail, "prev_hash": prev_hash}
    return hashlib.sha256((prev_hash + _canonical(row)).encode()).hexdigest()


def _check_detail(detail: dict) -> None:
    """Refused before anything is written, so that a caller's mistake shows in its tests instead
    of as a row that cannot be read back or that names a patient's study."""
    def check(key: str, value) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"audit detail {key!r} must be a finite number, got {value!r}")
        if isinstance(value, str) and _UID.fullmatch(value.strip()):
            raise ValueError(f"audit detail {key!r} looks like a DICOM UID: name studies by their review id, never by UID")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise TypeError(f"audit detail {key!r} must be a string, number, boolean, None or a list of them, "
                            f"got {type(value).__name__}")

    for key, value in detail.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            check(key, item)


def _entry(row) -> AuditEntry:
    return AuditEntry(id=row["id"], time=row["time"], actor=row["actor"], event=row["event"], outcome=row["outcome"],
                      client=row["client"], detail=json.loads(row["detail"]), hash=row["hash"])


class AuditLog:
    """The ``audit`` table of a listener :class:`~listener.store.Store`, mirrored to a JSON-lines file."""

    def __init__(self, store: Store, jsonl_path: Path | None) -> None:
        self.store = store
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        # one writer at a time in this process, so that the file's lines come in the database's order
        self._lock = threading.Lock()

    def record(self, event: str, actor: str | None, *, outcome: str = "ok", client: str | None = None,
               now: float | None = None, **detail) -> AuditEntry:
        """The row and its hash are written in one immediate transaction, so two writers (the
        review server's threads, a command line tool) cannot both chain onto the same row."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; the events are {', '.join(EVENTS)}")
        if not isinstance(outcome, str) or not outcome:
            raise ValueError(f"an audit outcome is a non-empty string, got {outcome!r}")
        _check_detail(detail)
        detail = {key: list(value) if isinstance(value, list | tuple) else value for key, value in detail.items()}
        # a REAL column gives back a float: hashing an int here would not match the row read back
        when = float(time.time() if now is None else now)
        with self._lock:
            with self.store.transaction() as db:
                dialect = self.store.dialect
                last = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
                sequence = db.execute(_LAST_ID[dialect]).fetchone()
                # the id is part of what the hash covers, so it is chosen here rather than by the insert
                row_id = max(last["id"] if last else 0, sequence[0] if sequence and sequence[0] else 0) + 1
                prev_hash = last["hash"] if last else GENESIS
                digest = _row_hash(row_id, when, actor, event, outcome, client, detail, prev_hash)
                db.execute("INSERT INTO audit (id, time, actor, event, outcome, client, detail, prev_hash, hash) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (row_id, when, actor, event, outcome, client, _canonical(detail), prev_hash, digest))
                advance = _ADVANCE[dialect]
                if advance is not None:
                    db.execute(advance, (row_id,))
            entry = AuditEntry(id=row_id, time=when, actor=actor, event=event, outcome=outcome, client=client,
                               detail=detail, hash=digest)
            self._append(entry)
        return entry

    def _append(self, entry: AuditEntry) -> None:
        """The file is a copy for collectors; a full disk or a bad path must not stop people from
        signing in or saving labels when the database has the entry already."""
        if self.jsonl_path is None:
            return
        try:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl_path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
                file.flush()
        except (OSError, ValueError) as error:  # ValueError: text the file's encoding cannot hold
            logger.warning("audit entry %d is in the database but could not be appended to %s: %s",
                           entry.id, self.jsonl_path, error)

    def entries(self, *, since: float | None = None, until: float | None = None, user: str | None = None,
                event: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """``since`` is inclusive and ``until`` exclusive, so that consecutive windows (one day,
        the next) neither miss nor repeat an entry. ``limit`` keeps the latest entries, like
        ``tail``: an auditor asking for 50 wants the last 50, still oldest first."""
        given = [(clause, value) for clause, value in
                 (("time >= ?", since), ("time < ?", until), ("actor = ?", user), ("event = ?", event))
                 if value is not None]
        clauses = [clause for clause, _ in given]
        params: list = [value for _, value in given]
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        rows = self.store.connection().execute(sql, params).fetchall()
        return [_entry(row) for row in reversed(rows)]

    def verify(self) -> list[str]:
        """Rows are checked against their own hash (a row edited in place) and against the row
        before (a row removed, or edited and re-hashed); the table's id counter (``_LAST_ID``)
        shows rows removed from the end, which no later row can."""
        db = self.store.connection()
        dialect = self.store.dialect
        problems = []
        present = {row["name"] for row in db.execute(_TRIGGERS_PRESENT[dialect])}
        for trigger in _TRIGGERS[dialect]:
            if trigger not in present:
                problems.append(f"trigger {trigger} is missing: the audit table can be changed")
        prev_id, prev_hash = 0, GENESIS
        for row in db.execute("SELECT * FROM audit ORDER BY id"):
            row_id = row["id"]
            if row_id != prev_id + 1:
                missing = f"row {prev_id + 1}" if row_id == prev_id + 2 else f"rows {prev_id + 1} to {row_id - 1}"
                problems.append(f"{missing} missing")
            if row["prev_hash"] != prev_hash:
                before = f"row {prev_id}" if prev_id else "the start of the trail"
                problems.append(f"row {row_id}: chain broken, its prev_hash is not the hash of {before}")
            try:
                detail = json.loads(row["detail"])
                digest = _row_hash(row_id, row["time"], row["actor"], row["event"], row["outcome"], row["client"],
                                   detail, row["prev_hash"])
            except (TypeError, ValueError):
                digest = None
            if digest != row["hash"]:
                problems.append(f"row {row_id}: changed after it was written (its hash does not match its contents)")
            prev_id, prev_hash = row_id, row["hash"]
        sequence = db.execute(_LAST_ID[dialect]).fetchone()
        if sequence is not None and sequence[0] is not None and sequence[0] > prev_id:
            last = sequence[0]
            problems.append(f"row {last} missing" if last == prev_id + 1 else f"rows {prev_id + 1} to {last} missing")
        return problems


def parse_time(text: str, now: float | None = None) -> float:
    """What people type after ``--since`` and ``--until``; naive times are the machine's local
    time, because that is the clock on the ward's wall."""
    value = str(text).strip()
    age = _AGE.fullmatch(value)
    if age:
        return (time.time() if now is None else now) - float(age.group(1)) * _AGE_SECONDS[age.group(2)]
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].+)?", value):
        raise ValueError(f"{text!r} is not a time: give {_TIME_FORMS}")
    try:
        return datetime.fromisoformat(value.replace("z", "Z")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {_TIME_FORMS}") from None


def _cell(value) -> str:
    """Names and details come from users (an attempted user name is whatever was typed): quoting
    and escaping keep one entry on one line, so nobody can forge entries into the table."""
    text = value if isinstance(value, str) else _canonical(value)
    if text == "" or any(not c.isprintable() or c.isspace() or c in "\"=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_entries(entries: list[AuditEntry]) -> str:
    """Columns padded to their widest value, detail last since it varies the most."""
    rows = [[datetime.fromtimestamp(entry.time).isoformat(timespec="seconds"), _cell(entry.actor) if entry.actor else "-",
             _cell(entry.event), _cell(entry.outcome), _cell(entry.client) if entry.client else "-",
             " ".join(f"{_cell(key)}={_cell(value)}" for key, value in sorted(entry.detail.items()))]
            for entry in entries]
    if not rows:
        return ""
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[5]]).rstrip() for row in rows)
