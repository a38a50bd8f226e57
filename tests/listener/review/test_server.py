"""Starting the app: beside the listener from ``[review]``, or alone as ``mura-review --config``."""
from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from listener.config import ConfigError, load_config
from tests.listener.orthanc import free_port
from tests.listener.review.conftest import wait_for


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_review_in_the_config_starts_the_app_in_a_process_of_the_listener(live):
    assert _healthy(live.review_url)
    children = subprocess.run(["pgrep", "-P", str(live.process.pid), "-f", "spawn_main"], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2  # the worker and the review app
    log = live.log_path.read_text()
    assert '"message": "review app"' in log and '"sign_in": true' in log
    assert "127.0.0.1 only" not in log  # a token is set


def test_mura_review_runs_alone_on_127_0_0_1_without_a_token_and_stops_on_sigterm(make_listener, tmp_path):
    port = free_port()
    config = make_listener(review={"host": "0.0.0.0", "port": port})
    script = Path(sys.executable).parent / "mura-review"
    assert script.is_file(), "pip install -e . installs the mura-review console script"
    log = open(tmp_path / "review.log", "wb")
    process = subprocess.Popen([str(script), "--config", str(config.path)], stdout=log, stderr=log)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}") or process.poll() is not None, 60, "mura-review")
        assert process.poll() is None, (tmp_path / "review.log").read_text()
        assert "listening on 127.0.0.1 only" in (tmp_path / "review.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log.close()


@pytest.mark.parametrize("table,error", [("show_patient_name = \"yes\"", "expected a bool"),
                                         ("tokn = \"x\"", "unknown key"), ("port = 70000", "ports")])
def test_a_bad_review_table_is_refused_naming_the_key(tmp_path, table, error):
    path = tmp_path / "listener.toml"
    path.write_text(f"[review]\n{table}\n")
    with pytest.raises(ConfigError, match=error):
        load_config(path)
