"""Two people in a real browser: headless Chromium (Debian's, driven by Playwright, no browser download)
on the live listener's page. A viewer reads but cannot override; a reviewer overrides, the corrected
SR reaches the PACS naming them, the audit trail lists both, and the export trains.

``UPDATE_SCREENSHOTS=1`` also writes the worklist and study view to ``docs/`` (the README's pictures).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from monailabel.client.client import MONAILabelClient  # installed --no-deps by make

from listener.__main__ import main
from mura_monai.data.mura import load_mura_split
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.listener.review.conftest import REPO, wait_for

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is needed (make system-deps)")


@pytest.fixture
def page(live):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(viewport={"width": 1440, "height": 860}, device_scale_factor=1)
        yield context.new_page()
        browser.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(path, REPO / "docs" / name)
    return path


def _srs(pacs) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(io.BytesIO(pacs.instance_file(i))) for i in pacs.instances()]
    return [ds for ds in datasets if ds.Modality == "SR"]


PASSWORD = "correct horse battery"
REVIEWER = ("jdoe", "Doe^Jane")
VIEWER = ("vview", "View^Victor")


def _review_cli(live, *args: str, stdin: str = "") -> str:
    """``mura-review ... --config`` of the live listener, as an administrator runs it on the host."""
    result = subprocess.run([str(Path(sys.executable).parent / "mura-review"), *args, "--config", str(live.config_path)],
                            input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _sign_in(page, live, name: str) -> None:
    page.goto(live.review_url + "/")
    page.locator("#username").fill(name)
    page.locator("#password").fill(PASSWORD)
    page.locator("#signin-form button[type=submit]").click()
    page.locator("tr.study-row").first.wait_for()


def test_a_viewer_cannot_override_a_reviewer_can_and_the_audit_lists_both(live, pacs, page, tmp_path):
    for (name, full_name), role in ((REVIEWER, "reviewer"), (VIEWER, "viewer")):
        _review_cli(live, "users", "add", name, "--role", role, "--full-name", full_name, "--password-stdin",
                    stdin=PASSWORD + "\n")
    # a Content-Security-Policy violation ("Refused to ...") or a script error; not the answers that the
    # test provokes (the sign-in page's 401, the viewer's 403), which the console also reports
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and not message.text.startswith("Failed to load resource")
            and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    # -- the viewer: reads the worklist and the study, cannot label --------------------------------
    _sign_in(page, live, VIEWER[0])
    assert page.locator("#user-role").text_content() == "viewer" and page.locator("#user-name").inner_text() == "Victor View"
    api_order = [s["id"] for s in live.api("/datastore/studies")["studies"]]
    top = live.api(f"/datastore/study?study={api_order[0]}")
    page.locator("tr.study-row").first.click()
    page.locator("#study-accession").wait_for()
    page.wait_for_function("() => document.getElementById('radiograph').naturalWidth > 0")
    assert page.locator("#btn-override").is_disabled() and page.locator("#btn-accept").is_disabled()
    page.keyboard.press("o")
    assert "viewer cannot label" in page.locator("#message").inner_text()
    # and the server refuses it too, whatever the page does
    status = page.evaluate("""async (sid) => {
        const me = await (await fetch('/auth/me')).json();
        const r = await fetch(`/datastore/label?image=${sid}&tag=final`, {method: 'PUT',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf_token},
            body: JSON.stringify({finding: 'normal'})});
        return r.status; }""", top["id"])
    assert status == 403
    page.locator("#btn-signout").click()
    page.locator("#username").wait_for()

    # -- the reviewer: overrides; the corrected SR names them ----------------------------------------
    _sign_in(page, live, REVIEWER[0])
    rows = page.locator("tr.study-row")
    assert [rows.nth(k).get_attribute("data-id") for k in range(rows.count())] == api_order
    assert top["review"] == "unreviewed"
    assert rows.first.locator("td.accession").inner_text() == top["accession_number"]
    _screenshot(page, tmp_path, "review_worklist.png")

    rows.first.click()
    heatmap = page.locator("#heatmap")
    page.wait_for_function("() => { const h = document.getElementById('heatmap'); "
                           "return h.complete && h.naturalWidth > 0 && document.getElementById('radiograph').naturalWidth > 0; }")
    assert heatmap.is_visible() and float(heatmap.evaluate("h => getComputedStyle(h).opacity")) > 0
    page.locator("#heatmap-opacity").fill("35")
    assert heatmap.evaluate("h => h.style.opacity") == "0.35"
    page.keyboard.press("h")
    assert heatmap.evaluate("h => h.style.opacity") == "0"
    page.keyboard.press("h")
    assert page.locator("#votes tr").count() == 2
    assert "Youden" in page.locator("#study-operating-point").inner_text() and top["operating_point"] == "youden"
    page.locator("#heatmap-opacity").fill("75")

    corrected = "normal" if top["finding"] == "abnormal" else "abnormal"
    page.locator("#comment").fill("second look: the reviewer disagrees")
    page.keyboard.press("Escape")  # leave the comment box: shortcuts act on the page, not in a text field
    page.keyboard.press("o")
    page.locator("#review-state .state.overridden").wait_for()
    assert "corrected SR queued" in page.locator("#message").inner_text()
    _screenshot(page, tmp_path, "review_study.png")

    labels = live.api(f"/datastore/label/info?label={top['id']}&tag=final")["labels"]
    assert [(lab["finding"], lab["reviewer"], lab["reviewer_name"], lab["comment"]) for lab in labels] == [
        (corrected, *REVIEWER, "second look: the reviewer disagrees")]

    machine = {ds.SOPInstanceUID: ds for ds in _srs(pacs)}
    revised = wait_for(lambda: [ds for ds in _srs(pacs) if ds.get("PredecessorDocumentsSequence")], 60,
                       "the corrected SR in Orthanc", poll_s=0.5)
    (sr,) = revised
    result = read_sr_result(sr)
    assert result["finding"] == corrected and result["reviewer"] == REVIEWER[1]
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == REVIEWER[1]
    assert result["predecessors"][0] in machine and sr.VerificationFlag == "VERIFIED"
    predecessor = machine[result["predecessors"][0]]
    assert sr.SeriesInstanceUID == predecessor.SeriesInstanceUID and sr.InstanceNumber == predecessor.InstanceNumber + 1
    assert result["probability"] == pytest.approx(read_sr_result(predecessor)["probability"])
    path = tmp_path / "corrected_sr.dcm"
    sr.save_as(path)
    assert dciodvfy_errors(path) == []

    page.keyboard.press("n")  # on to the next unreviewed study
    page.wait_for_function(f"() => location.hash.startsWith('#/study/') && !location.hash.endsWith('{top['id']}')")

    # -- MONAI Label's client with the reviewer's own token: the label is theirs ----------------------
    shown = page.evaluate("() => location.hash.split('/').pop()")
    token = _review_cli(live, "tokens", "create", REVIEWER[0], "--label", "slicer").strip()
    client = MONAILabelClient(live.review_url, tmpdir=str(tmp_path), client_id="slicer-7")
    client.update_auth({"token_type": "Bearer", "access_token": token})
    label = tmp_path / "label.txt"
    label.write_text(live.api(f"/datastore/study?study={shown}")["finding"])  # agrees: no further SR
    assert client.save_label(shown, str(label), tag="final")["sr_revised"] is False
    page.reload()
    page.locator("#review-state .state.accepted").wait_for()
    assert f"Jane Doe ({REVIEWER[0]})" in page.locator("#history").inner_text()

    # -- the audit trail lists both people ---------------------------------------------------------------
    trail = [json.loads(line) for line in _review_cli(live, "audit", "--json", "--since", "1h").splitlines()]
    events = {(e["actor"], e["event"]) for e in trail}
    for name, _ in (REVIEWER, VIEWER):
        assert {(name, "sign_in"), (name, "study_opened")} <= events, name
    assert (VIEWER[0], "access_denied") in events and (VIEWER[0], "sign_out") in events
    saved = [e for e in trail if e["event"] == "label_saved"]
    assert [(e["actor"], e["detail"]["study"], e["detail"]["finding"]) for e in saved] == [
        (REVIEWER[0], top["id"], corrected), (REVIEWER[0], shown, live.api(f"/datastore/study?study={shown}")["finding"])]
    assert not any(name in line for line in (live.config.spool_dir / "audit.jsonl").read_text().splitlines()
                   for name in _patient_names(live))
    assert console_errors == []  # no Content-Security-Policy violation, no failed script

    out = tmp_path / "export"
    assert main(["export-labels", "--config", str(live.config_path), str(out)]) == 0
    exported = [study for split in ("train", "valid") for study in load_mura_split(out, split).studies]
    mine = next(study for study in exported if len(study["images"]) == len(top["images"]) and
                study["label"] == int(corrected == "abnormal") and study["body_part"] == top["body_part"])
    assert mine
    (export,) = [json.loads(line) for line in _review_cli(live, "audit", "--json", "--event", "export").splitlines()]
    assert top["id"] in export["detail"]["studies"] and export["actor"].startswith("cli:")


def _patient_names(live) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).PatientName) for files in live.pushed for f in files}
