"""The audit trail: append-only rows chained by hash, mirrored as JSON lines, and the command line's helpers."""
from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from listener.database import INTEGRITY_ERRORS
from listener.review.audit import EVENTS, AuditLog, format_entries, parse_time
from listener.store import Store

STUDY = "s0123456789abcdef"
T0 = 1_800_000_000.0


@pytest.fixture
def store(store_url):
    store = Store(store_url)
    yield store
    store.close()


def _trail(log: AuditLog) -> list:
    """Four entries by two people over three hours, the times given so filters have known answers."""
    return [log.record("sign_in", "alice", client="10.0.0.5", now=T0, method="password"),
            log.record("study_opened", "alice", client="10.0.0.5", now=T0 + 3600, study=STUDY),
            log.record("label_saved", "bob", client="10.0.0.6", now=T0 + 7200, study=STUDY, finding="abnormal"),
            log.record("sign_in_failed", None, outcome="denied", client="10.0.0.7", now=T0 + 10800, attempted="mallory")]


def test_record_and_entries_round_trip(store, tmp_path):
    log = AuditLog(store, tmp_path / "audit.jsonl")
    saved = log.record("label_saved", "alice", client="10.0.0.5", now=T0, study=STUDY, finding="abnormal",
                       probability=0.75, votes=[1, 0, 1], final=True, comment=None)
    [read] = AuditLog(store, None).entries()
    assert read == saved
    assert (read.actor, read.event, read.outcome, read.client, read.time) == ("alice", "label_saved", "ok", "10.0.0.5", T0)
    assert read.detail == {"study": STUDY, "finding": "abnormal", "probability": 0.75, "votes": [1, 0, 1], "final": True,
                           "comment": None}
    assert len(read.hash) == 64
    shown = read.as_dict()
    assert json.loads(json.dumps(shown)) == shown
    assert shown["at"] == "2027-01-15T08:00:00.000Z" == datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert shown["time"] == T0 and shown["id"] == read.id and shown["hash"] == read.hash


def test_entries_filter_by_time_user_and_event_oldest_first(store):
    log = AuditLog(store, None)
    written = _trail(log)
    ids = [entry.id for entry in written]
    assert [e.id for e in log.entries()] == ids
    assert [e.id for e in log.entries(since=T0 + 3600)] == ids[1:]
    assert [e.id for e in log.entries(until=T0 + 7200)] == ids[:2]  # until is exclusive
    assert [e.id for e in log.entries(since=T0 + 3600, until=T0 + 7200)] == ids[1:2]
    assert [e.id for e in log.entries(user="alice")] == ids[:2]
    assert [e.id for e in log.entries(user="bob")] == ids[2:3]
    assert [e.id for e in log.entries(event="sign_in_failed")] == ids[3:]
    assert [e.id for e in log.entries(user="alice", event="study_opened")] == ids[1:2]
    assert log.entries(user="nobody") == []
    assert [e.id for e in log.entries(limit=2)] == ids[2:]  # the latest two, still oldest first
    assert [e.id for e in log.entries(user="alice", limit=1)] == ids[1:2]


@pytest.mark.parametrize("statement", ["UPDATE audit SET actor='eve' WHERE id=1", "DELETE FROM audit WHERE id=1",
                                       "DELETE FROM audit", "TRUNCATE audit"])
def test_the_table_refuses_update_and_delete(store, statement):
    if statement.startswith("TRUNCATE") and store.dialect == "sqlite":
        pytest.skip("SQLite has no TRUNCATE (its DELETE without WHERE is refused above)")
    log = AuditLog(store, None)
    _trail(log)
    with pytest.raises(INTEGRITY_ERRORS, match="the audit trail is append-only"):
        store.connection().execute(statement)
    assert [e.actor for e in log.entries()] == ["alice", "alice", "bob", None]
    assert log.verify() == []


def test_the_jsonl_file_has_one_line_per_entry_with_the_same_ids_and_hashes(store, tmp_path):
    path = tmp_path / "logs" / "deeper" / "audit.jsonl"  # its folder is created
    log = AuditLog(store, path)
    written = _trail(log)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(written)
    parsed = [json.loads(line) for line in lines]
    assert [(p["id"], p["hash"]) for p in parsed] == [(e.id, e.hash) for e in written]
    assert parsed == [e.as_dict() for e in written]
    AuditLog(store, path).record("sign_out", "alice", now=T0 + 20000)  # appended, not overwritten
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(written) + 1


def test_verify_is_empty_for_an_intact_trail_written_by_several_logs(store, tmp_path):
    _trail(AuditLog(store, tmp_path / "audit.jsonl"))
    second = AuditLog(store, tmp_path / "audit.jsonl")  # a restart, and another thread's connection
    thread = threading.Thread(target=lambda: second.record("export", "bob", now=T0 + 20000, studies=2, format="mura"))
    thread.start()
    thread.join()
    second.record("sign_out", "bob", now=T0 + 20001)
    assert [e.id for e in second.entries()] == [1, 2, 3, 4, 5, 6]
    assert second.verify() == []


def _drop_triggers(store: Store) -> None:
    db = store.connection()
    on = " ON audit" if store.dialect == "postgresql" else ""  # PostgreSQL's triggers are named per table
    db.execute("DROP TRIGGER audit_no_update" + on)
    db.execute("DROP TRIGGER audit_no_delete" + on)


def test_verify_names_a_row_changed_with_the_triggers_dropped(store):
    log = AuditLog(store, None)
    _trail(log)
    _drop_triggers(store)
    assert any("audit_no_update" in problem for problem in log.verify())
    store.connection().execute("""UPDATE audit SET actor='carol' WHERE id=3""")
    problems = log.verify()
    assert any(problem.startswith("row 3: changed") for problem in problems), problems
    assert not any(problem.startswith(("row 1", "row 2", "row 4")) for problem in problems), problems


def test_verify_names_a_changed_row_even_when_its_hash_was_recomputed(store):
    log = AuditLog(store, None)
    _trail(log)
    _drop_triggers(store)
    db = store.connection()
    db.execute("UPDATE audit SET detail='{\"finding\":\"normal\",\"study\":\"s0123456789abcdef\"}', hash=? WHERE id=3",
               ("f" * 64,))
    problems = log.verify()
    assert any(problem.startswith("row 3: changed") for problem in problems), problems
    assert any(problem.startswith("row 4: chain broken") for problem in problems), problems


def test_verify_names_rows_deleted_from_the_middle_the_start_and_the_end(store):
    log = AuditLog(store, None)
    _trail(log)
    log.record("sign_out", "alice", now=T0 + 20000)
    _drop_triggers(store)
    db = store.connection()
    db.execute("DELETE FROM audit WHERE id=3")
    problems = log.verify()
    assert "row 3 missing" in problems, problems
    assert any(problem.startswith("row 4: chain broken") for problem in problems), problems
    db.execute("DELETE FROM audit WHERE id=1")
    assert any(problem.startswith("row 2: chain broken") for problem in log.verify())
    db.execute("DELETE FROM audit WHERE id=5")
    assert "row 5 missing" in log.verify()


def test_unknown_events_and_unsafe_details_are_refused_and_nothing_is_written(store, tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(store, path)
    with pytest.raises(ValueError, match="unknown audit event 'login'"):
        log.record("login", "alice")
    with pytest.raises(ValueError, match="DICOM UID"):
        log.record("study_opened", "alice", study="1.2.840.113619.2.55.3.604688119")
    with pytest.raises(TypeError, match="'when'"):
        log.record("export", "alice", when=datetime.now())
    with pytest.raises(ValueError, match="finite"):
        log.record("export", "alice", score=float("nan"))
    with pytest.raises(TypeError, match="'nested'"):
        log.record("export", "alice", nested=[[1]])
    assert log.entries() == [] and not path.exists()
    assert set(EVENTS) >= {"sign_in", "label_saved", "token_revoked"}
    assert log.record("upload", "alice", client="10.1.2.3").client == "10.1.2.3"  # an IPv4 address is no UID


def test_parse_time_accepts_dates_datetimes_and_ages():
    assert parse_time("2026-11-29") == datetime(2026, 11, 29).timestamp()  # local midnight
    assert parse_time("2026-11-29T08:00") == datetime(2026, 11, 29, 8).timestamp()
    assert parse_time(" 2026-11-29T08:00:30 ") == datetime(2026, 11, 29, 8, 0, 30).timestamp()
    assert parse_time("2026-11-29T08:00Z") == datetime(2026, 11, 29, 8, tzinfo=UTC).timestamp()
    assert parse_time("2026-11-29T08:00+01:00") == datetime(2026, 11, 29, 7, tzinfo=UTC).timestamp()
    assert parse_time("2026-11-29T08:00-05:30") == datetime(2026, 11, 29, 8, tzinfo=timezone(-timedelta(hours=5, minutes=30))
                                                            ).timestamp()
    assert parse_time("90m", now=T0) == T0 - 90 * 60
    assert parse_time("24h", now=T0) == T0 - 24 * 3600
    assert parse_time("7d", now=T0) == T0 - 7 * 86400


@pytest.mark.parametrize("text", ["yesterday", "7w", "", "-3d", "2026-13-01", "2026-11-29T25:00", "29/11/2026", "1800000000"])
def test_parse_time_refuses_anything_else_in_one_line_naming_the_forms(text):
    with pytest.raises(ValueError) as raised:
        parse_time(text)
    message = str(raised.value)
    assert "\n" not in message and "2026-11-29" in message and "90m" in message and "24h" in message


def test_format_entries_is_one_line_per_entry_with_actor_and_event(store):
    log = AuditLog(store, None)
    entries = _trail(log)
    entries.append(log.record("sign_in_failed", "eve\n2030-01-01T00:00:00  admin  user_added", outcome="denied",
                              now=T0 + 20000, reason="bad password"))
    text = format_entries(entries)
    lines = text.splitlines()
    assert len(lines) == len(entries)  # the forged newline stays escaped inside its entry
    for line, entry in zip(lines, entries):
        assert line.startswith(datetime.fromtimestamp(entry.time).isoformat(timespec="seconds"))
        assert entry.event in line
        assert (entry.actor.replace("\n", "\\n") if entry.actor else " - ") in line
    assert "finding=abnormal" in lines[2] and f"study={STUDY}" in lines[2]
    assert 'reason="bad password"' in lines[4] and "denied" in lines[4]
    assert format_entries([]) == ""


def test_an_unwritable_jsonl_path_does_not_stop_record(store, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    log = AuditLog(store, blocker / "audit.jsonl")
    with caplog.at_level(logging.WARNING, logger="listener.review"):
        entry = log.record("sign_in", "alice", now=T0)
    assert log.entries() == [entry]
    assert log.verify() == []
    assert any(record.levelno == logging.WARNING and "could not be appended" in record.getMessage()
               for record in caplog.records)
