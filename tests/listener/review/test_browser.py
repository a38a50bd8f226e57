"""A reviewer in a real browser: headless Chromium (Debian's, driven by Playwright, no browser download)
on the live listener's page, from the worklist to an override that reaches the PACS and the export.

``UPDATE_SCREENSHOTS=1`` also writes the worklist and study view to ``docs/`` (the README's pictures).
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from monailabel.client.client import MONAILabelClient  # installed --no-deps by make

from listener.__main__ import main
from mura_monai.data.mura import load_mura_split
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors
from tests.listener.review.conftest import REPO, REVIEWER, TOKEN, wait_for

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


def test_worklist_to_override_stored_sent_to_the_pacs_and_exported(live, pacs, page, tmp_path):
    page.goto(f"{live.review_url}/?token={TOKEN}")  # signs in: the session cookie, then the page
    assert "token" not in page.url
    rows = page.locator("tr.study-row")
    rows.first.wait_for()
    api_order = [s["id"] for s in live.api("/datastore/studies")["studies"]]
    assert [rows.nth(k).get_attribute("data-id") for k in range(rows.count())] == api_order
    top = live.api(f"/datastore/study?study={api_order[0]}")
    assert top["review"] == "unreviewed"
    assert page.locator("tr.study-row").first.locator("td.accession").inner_text() == top["accession_number"]
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
    page.locator("#reviewer").fill(REVIEWER)
    page.locator("#comment").fill("second look: the reviewer disagrees")
    page.keyboard.press("Escape")  # leave the comment box: shortcuts act on the page, not in a text field
    page.keyboard.press("o")
    page.locator("#review-state .state.overridden").wait_for()
    assert "corrected SR queued" in page.locator("#message").inner_text()
    _screenshot(page, tmp_path, "review_study.png")

    labels = live.api(f"/datastore/label/info?label={top['id']}&tag=final")["labels"]
    assert [(lab["finding"], lab["reviewer"], lab["comment"]) for lab in labels] == [
        (corrected, REVIEWER, "second look: the reviewer disagrees")]

    machine = {ds.SOPInstanceUID: ds for ds in _srs(pacs)}
    revised = wait_for(lambda: [ds for ds in _srs(pacs) if ds.get("PredecessorDocumentsSequence")], 60,
                       "the corrected SR in Orthanc", poll_s=0.5)
    (sr,) = revised
    result = read_sr_result(sr)
    assert result["finding"] == corrected and result["reviewer"] == REVIEWER
    assert result["predecessors"][0] in machine and sr.VerificationFlag == "VERIFIED"
    predecessor = machine[result["predecessors"][0]]
    assert sr.SeriesInstanceUID == predecessor.SeriesInstanceUID and sr.InstanceNumber == predecessor.InstanceNumber + 1
    assert result["probability"] == pytest.approx(read_sr_result(predecessor)["probability"])
    path = tmp_path / "corrected_sr.dcm"
    sr.save_as(path)
    assert dciodvfy_errors(path) == []

    page.keyboard.press("n")  # on to the next unreviewed study
    page.wait_for_function(f"() => location.hash.startsWith('#/study/') && !location.hash.endsWith('{top['id']}')")

    out = tmp_path / "export"
    assert main(["export-labels", "--config", str(live.config_path), str(out)]) == 0
    (exported,) = [study for split in ("train", "valid") for study in load_mura_split(out, split).studies]
    assert exported["label"] == int(corrected == "abnormal") and exported["body_part"] == top["body_part"]
    assert len(exported["images"]) == len(top["images"])

    # MONAI Label's client names nobody: the page says whose label it is instead of a blank name
    # (an agreeing label, so no further SR goes to the PACS)
    shown = page.evaluate("() => location.hash.split('/').pop()")
    client = MONAILabelClient(live.review_url, tmpdir=str(tmp_path), client_id="slicer-7")
    client.update_auth({"token_type": "Bearer", "access_token": TOKEN})
    label = tmp_path / "label.txt"
    label.write_text(live.api(f"/datastore/study?study={shown}")["finding"])
    assert client.save_label(shown, str(label), tag="final")["sr_revised"] is False
    page.reload()
    page.locator("#review-state .state.accepted").wait_for()
    assert "unattributed API client (slicer-7)" in page.locator("#history").inner_text()
    assert page.locator("#message").inner_text().endswith("by unattributed API client (slicer-7)")
