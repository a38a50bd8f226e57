"""The store's side of running roles apart: exporters sharing an outbox, front-ends sharing the
assembly, the roles' heartbeats and the queue summary, on both backends; ``status`` with roles."""
from __future__ import annotations

import json
import threading
import time

import pytest

from listener.__main__ import main
from listener.roles import Heartbeat
from listener.store import Store
from mura_monai.results import StudyResult
from tests.listener.support import write_config

_RESULT = StudyResult(study="1.2.3", body_part="XR_WRIST", probability=0.2, abnormal=False, threshold=0.5)


def _outbox(store: Store, studies: int, files: int = 3) -> list[int]:
    """``studies`` analysed studies with ``files`` files each for one destination; their outbox ids."""
    for i in range(studies):
        store.record_instance(f"1.{i}.1", f"9.{i}", "MOD", "cr", f"p{i}", now=1.0)
    store.promote_stable(0, now=2.0)
    while (study := store.claim("w", now=3.0)) is not None:
        store.finish(study.key, _RESULT, [f"{study.key}-{k}.dcm" for k in range(files)], ["PACS@h:1"], 0, None,
                     now=3.0, worker_id="w")
    return [row["id"] for row in store.outbox()]


def test_two_exporters_send_every_file_exactly_once(store_url):
    store = Store(store_url)
    ids = _outbox(store, 20)
    sent: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def exporter(mine: list[int], name: str) -> None:
        start.wait()
        try:
            while exports := store.due_exports(now=10.0, limit=4, exporter_id=name, lease_s=600):
                for export in exports:
                    time.sleep(0.001)  # a C-STORE: the other exporter claims meanwhile
                    store.export_done(export.id, now=10.0)
                    mine.append(export.id)
        finally:
            store.close()

    threads = [threading.Thread(target=exporter, args=(sent[i], f"e{i}")) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(sent[0] + sent[1]) == sorted(ids)  # every file, none twice
    assert sent[0] and sent[1]  # both took a share
    rows = store.outbox()
    assert {r["state"] for r in rows} == {"sent"} and {(r["claimed_by"], r["lease_until"]) for r in rows} == {(None, None)}
    assert {s.state for s in store.studies()} == {"sent"}


def test_a_dead_exporters_files_wait_for_its_lease(store_url):
    store = Store(store_url)
    ids = _outbox(store, 1, files=2)
    assert [e.id for e in store.due_exports(now=10.0, exporter_id="dead", lease_s=30)] == ids
    assert store.due_exports(now=20.0, exporter_id="alive", lease_s=30) == []  # held by the dead one
    assert [e.id for e in store.due_exports(now=20.0, exporter_id="dead", lease_s=30)] == ids  # its own: again
    taken = store.due_exports(now=51.0, exporter_id="alive", lease_s=30)  # the lease ran out
    assert [e.id for e in taken] == ids
    store.export_failed(ids[0], "refused", next_attempt_at=60.0, now=51.0)  # a retry is anyone's
    assert [e.id for e in store.due_exports(now=61.0, exporter_id="third", lease_s=30)] == [ids[0]]


def test_front_ends_promoting_at_once_promote_each_study_once(store_url):
    """Two front-ends run the assembly on one database: no error, no study promoted twice, and
    one study whose instances reached both (same calling AE) is one study."""
    stores = [Store(store_url), Store(store_url)]
    for i in range(40):
        stores[i % 2].record_instance(f"1.{i}.1", f"9.{i % 20}", "MOD ", "cr", f"p{i}", now=1.0)
    assert len(stores[0].study_keys()) == 20  # each study's instances arrived at both
    promoted: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def assemble(store: Store, mine: list[str]) -> None:
        start.wait()
        try:
            for _ in range(20):
                mine += store.promote_stable(0, now=5.0)
        finally:
            store.close()

    threads = [threading.Thread(target=assemble, args=(stores[i], promoted[i])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(promoted[0] + promoted[1]) == sorted(stores[0].study_keys())
    assert {s.state for s in stores[0].studies()} == {"waiting"}


def test_roles_beat_fall_silent_and_stop(store_url):
    store = Store(store_url)
    store.beat("h1:1/scp", "scp", "h1", 1, details={"port": 104}, beat_s=5, started_at=90.0, now=100.0)
    store.beat("h2:2/worker", "worker", "h2", 2, device="cuda:0", beat_s=5, started_at=90.0, now=100.0)
    store.beat("h2:2/worker", "worker", "h2", 2, device="cuda:0", beat_s=5, started_at=90.0, now=110.0)
    store.beat("h3:3/exporter", "exporter", "h3", 3, beat_s=5, started_at=90.0, stopped=True, now=100.0)
    roles = {r["id"]: r for r in store.roles(now=116.0)}
    assert roles["h1:1/scp"]["state"] == "silent" and roles["h1:1/scp"]["details"] == {"port": 104}
    assert (roles["h2:2/worker"]["state"], roles["h2:2/worker"]["device"], roles["h2:2/worker"]["age_s"]) == (
        "running", "cuda:0", 6.0)
    assert roles["h2:2/worker"]["started_at"] == 90.0
    assert roles["h3:3/exporter"]["state"] == "stopped"
    store.beat("h9:9/scp", "scp", "h9", 9, now=100.0 + 8 * 86400)  # a week later the old rows are gone
    assert [r["id"] for r in store.roles()] == ["h9:9/scp"]


def test_queue_summary_counts_states_and_the_oldest_waiting(store_url):
    store = Store(store_url)
    assert store.queue_summary() == ({s: 0 for s in ("received", "waiting", "analysing", "analysed", "sent", "failed")},
                                     None)
    for i in range(3):
        store.record_instance(f"1.{i}.1", f"9.{i}", "MOD", "cr", f"p{i}", now=1.0 + i)
    store.promote_stable(0.5, now=2.6)  # 9.0 and 9.1 complete at 2.6
    store.promote_stable(0.5, now=7.0)  # 9.2 at 7.0
    store.claim("w", now=8.0)           # the oldest waiting (9.0) is taken
    counts, oldest = store.queue_summary()
    assert (counts["waiting"], counts["analysing"], counts["received"]) == (2, 1, 0)
    assert oldest == 2.6  # 9.1, waiting since it became complete


def test_status_shows_roles_and_queue(tmp_path, capsys):
    config = write_config(tmp_path)
    from listener.config import load_config
    from listener.paths import store_url

    store = Store(store_url(load_config(config)))
    beat = Heartbeat(store, "h:1/worker", "worker", "cpu", beat_s=0.05).start()
    store.record_instance("1.1", "9.1", "MOD", "cr", "p", now=1.0)
    store.promote_stable(0, now=time.time() - 30)
    assert main(["status", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"roles", "queue", "studies"}
    (role,) = report["roles"]
    assert (role["id"], role["role"], role["device"], role["state"]) == ("h:1/worker", "worker", "cpu", "running")
    assert report["queue"]["depth"]["waiting"] == 1 and 25 < report["queue"]["oldest_waiting_s"] < 120
    assert [row["state"] for row in report["studies"]] == ["waiting"]
    beat.stop()
    assert main(["status", "--config", str(config), "--roles"]) == 0
    out = capsys.readouterr().out
    assert "h:1/worker" in out and "stopped" in out and "waiting 1" in out and "oldest waiting: 30s" in out
    assert "9.1" not in out  # --roles: no studies table
    assert main(["status", "--config", str(config)]) == 0
    assert "9.1" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["cuda:x", "gpu"])
def test_serve_refuses_a_bad_device(tmp_path, value, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(write_config(tmp_path)), "--device", value])
