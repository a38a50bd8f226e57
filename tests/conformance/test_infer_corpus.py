"""The whole corpus through `mura-monai infer --dicom-out`, as a user would run it on a PACS export:
every scoreable entry gets a result, an SR and a heatmap SC that pass dciodvfy; every other entry
is listed as refused with its reason (and a stderr line), and no entry is dropped silently."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from mura_monai.cli import main
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors


def test_infer_scores_or_refuses_every_entry(corpus, conformance_ensemble, one_torch_thread, tmp_path, capsys):
    fitted = conformance_ensemble
    folder = corpus[0].path.parent
    out = tmp_path / "infer.json"
    rc = main(["infer", "--bundle", str(fitted["bundle"]), "--members-models-dir", str(fitted["members"]),
               "--models-dir", str(fitted["models"]), "--device", "cpu", str(folder), "--output", str(out),
               "--dicom-out", str(tmp_path / "dicom")])
    assert rc == 0
    doc = json.loads(out.read_text())
    stderr = capsys.readouterr().err
    by_study = {s["study"]: s for s in doc["studies"]}
    refused = {Path(r["path"]).stem: r["reason"] for r in doc["refused"]}
    for entry in corpus:
        if entry.scored:
            uid = pydicom.dcmread(entry.path, stop_before_pixels=True).StudyInstanceUID
            assert uid in by_study, f"{entry.name} was neither scored nor refused"
        else:
            assert entry.refusal in refused.get(entry.name, ""), entry.name
            assert f"refused {entry.path}" in stderr, entry.name
    assert len(doc["studies"]) == sum(e.scored for e in corpus) and len(refused) == sum(not e.scored for e in corpus)
    failures = {}
    for study in doc["studies"]:
        written = [Path(p) for p in study["dicom_outputs"]]
        assert [p.name for p in written] == ["sr.dcm", "sc_1.dcm"], study["study"]
        errors = {p.name: dciodvfy_errors(p) for p in written}
        if any(errors.values()):
            failures[study["study"]] = errors
        sr = read_sr_result(pydicom.dcmread(written[0]))
        assert sr["referenced_sop_instance_uids"] == [i["sop_instance_uid"] for i in study["images"]]
        assert sr["probability"] == pytest.approx(study["probability"], abs=1e-6)
    assert failures == {}


def test_infer_with_nothing_scoreable_says_so(corpus, conformance_ensemble, tmp_path, capsys):
    fitted = conformance_ensemble
    refused = [str(e.path) for e in corpus if not e.scored]
    rc = main(["infer", "--bundle", str(fitted["bundle"]), "--members-models-dir", str(fitted["members"]),
               "--models-dir", str(fitted["models"]), "--device", "cpu", *refused])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"nothing could be scored: {len(refused)} input file(s) refused" in err
