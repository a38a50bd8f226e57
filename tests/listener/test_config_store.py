"""listener.toml checking and the store's study life cycle (re-analysis, recovery, failures)."""
from __future__ import annotations

from pathlib import Path

import pytest

from listener import paths
from listener.config import ConfigError, load_config
from listener.store import Store
from mura_monai.results import StudyResult
from tests.listener.support import write_config

_RESULT = StudyResult(study="1.2.3", body_part="XR_WRIST", probability=0.2, abnormal=False, threshold=0.5)

REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "listener.example.toml"


def test_the_example_config_loads_and_relative_paths_follow_the_file(tmp_path):
    config = load_config(REPO_EXAMPLE)
    assert config.listener.ae_title == "MURA_AI" and config.destinations[0].port == 4242
    assert config.spool_dir == REPO_EXAMPLE.parent / "var" / "spool"


@pytest.mark.parametrize("text, message", [
    ("[listener]\nallowed_calling_aet = ['A']\n", "unknown key"),
    ("[listener]\nport = 'x'\n", "expected a int"),
    ("[listener]\nae_title = 'A_TITLE_FAR_TOO_LONG'\n", "1 to 16 characters"),
    ("[listner]\n", "unknown table"),
    ("[listener\n", "not valid TOML"),
    ("[listener]\ntls_cert = 'cert.pem'\n", "go together"),
    ("[store]\nurl = 'mysql://u:secret@db/x'\n", "unsupported scheme 'mysql'"),
    ("[store]\nurl = 'db.example.org'\n", "unsupported scheme"),
    ("[store]\nlease_s = 0\n", "lease_s must be positive"),
    ("[store]\npool = 3\n", "unknown key"),
    ("[model]\nheatmap_studies = 'abnormals'\n", "heatmap_studies must be one of all, abnormal, uncertain, none"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "listener.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("text, message", [
    ("[model]\nbackend = 'tensorrt'\n", "backend must be one of auto, torch, torchscript, onnxruntime; got 'tensorrt'"),
    ("[model]\nonnx_threads = -1\n", "onnx_threads must be 0 .* or more; got -1"),
])
def test_a_bad_backend_setting_is_named_with_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "listener.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_instances_after_an_analysis_reopen_the_study_for_a_new_version(store_url):
    store = Store(store_url)
    key = store.record_instance("1.1", "9", "MOD", "cr", "a", now=0)
    store.promote_stable(5, now=10)
    store.claim(now=10)
    store.record_instance("1.2", "9", "MOD", "cr", "b", now=11)  # arrives during the analysis
    assert store.finish(key, _RESULT, ["sr"], ["PACS@h:1"], 0, "sr", now=12) == 1
    assert store.study(key).state == "received"  # analysed again with the new image
    store.promote_stable(5, now=20)
    study = store.claim(now=20)
    assert study.version == 1 and study.sr_path == "sr"  # the predecessor the next SR references
    assert store.finish(key, _RESULT, ["sr2"], ["PACS@h:1"], 0, "sr2", now=21) == 2
    assert store.study(key).state == "analysed" and len(store.instances(key)) == 2


def test_a_dead_workers_study_is_claimed_again_and_failures_are_not_retried_forever(store_url):
    store = Store(store_url)
    key = store.record_instance("1.1", "9", "MOD", "cr", "a", now=0)
    store.promote_stable(0, now=1)
    store.claim(now=1)
    assert store.recover() == 1 and store.study(key).state == "waiting"
    store.claim(now=2)
    assert store.fail(key, "decoder crashed", retry=True, max_attempts=3) == "waiting"
    store.claim(now=3)
    assert store.fail(key, "decoder crashed", retry=True, max_attempts=3) == "failed"
    assert store.study(key).reason == "decoder crashed"
    other = store.record_instance("2.1", "8", "MOD", "cr", "b", now=0)
    store.promote_stable(0, now=1)
    store.claim(now=1)
    assert store.fail(other, "no decodable radiograph", retry=False, max_attempts=3) == "failed"


def test_same_study_from_two_modalities_is_two_studies(store_url):
    store = Store(store_url)
    a = store.record_instance("1.1", "9", "MOD_A", "cr", "a")
    b = store.record_instance("1.2", "9", "MOD_B", "cr", "b")
    assert a != b and len(store.studies()) == 2


def test_the_store_is_the_spools_sqlite_file_unless_a_url_is_given(tmp_path):
    path = tmp_path / "listener.toml"
    path.write_text("[listener]\nspool_dir = 'spool'\n")
    config = load_config(path)
    assert (config.store.url, config.store.lease_s) == ("", 60.0)
    assert paths.store_url(config) == str(tmp_path / "spool" / "queue.sqlite3")
    for url in ("postgresql://mura@db.example.org:5432/mura", "postgresql+psycopg://mura:pw@db/mura"):
        path.write_text(f"[store]\nurl = '{url}'\nlease_s = 30\n")
        config = load_config(path)
        assert paths.store_url(config) == url and config.store.lease_s == 30.0


def test_write_config_helper_round_trips(tmp_path):
    config = load_config(write_config(tmp_path, allowed_calling_aets=["X"], stable_age_s=2.5))
    assert config.listener.allowed_calling_aets == ["X"] and config.listener.stable_age_s == 2.5
