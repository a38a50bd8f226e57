"""Reviewed studies as a MURA root, so that retraining on the corrections is one ``run training`` away.

The layout is Stanford's (``MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyN_{positive,negative}/
imageK.png`` and the four CSVs), which :mod:`mura_monai.data.mura` and every bundle read
unchanged. The study label is the reviewer's latest final label. Patients get new numbers,
one per PatientID (in the order of a hash of it, so nothing of the ID shows), and the split into
train and valid is by patient, as MURA's is. Images are the radiographs as the model read them
(modality and VOI LUT applied, MONOCHROME1 inverted), as 8-bit PNG like MURA's.
"""
from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import pydicom

from listener.config import ListenerConfig
from listener.paths import store_url
from listener.review.agreement import agreement_rows, write_agreement
from listener.review.datastore import radiograph_png, study_id
from listener.review.labels import LabelStore
from listener.store import Store

__all__ = ["export_labels"]

logger = logging.getLogger("listener.review")


_HEADER = ("PatientID", "StudyDate", "BodyPartExamined", "StudyDescription", "SeriesDescription")


def _header(path: str) -> dict:
    """What the export needs of the first image; the body part by the rule inference reads it by."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER))
    return {k: str(ds.get(k, "") or "") for k in _HEADER}


def _reviewed_studies(config: ListenerConfig) -> tuple[list[dict], dict[str, int]]:
    """The studies with a final label, as records; and how many were left out, by reason."""
    from mura_monai.body_parts import body_part_of
    from mura_monai.constants import BODY_PARTS

    store = Store(store_url(config))
    labels = LabelStore(store)
    labels.record_originals()
    latest = labels.latest_study_labels()
    records, skipped = [], {"unknown body part": 0, "no readable image": 0}
    try:
        for study in store.studies():
            final = latest.get((study.key, "final"))
            if final is None:
                continue
            result = study.result
            analysed = [image.sop_instance_uid for image in (result.images if result else ())]
            instances = {row["sop_instance_uid"]: row["path"] for row in store.instances(study.key)}
            paths = [instances[uid] for uid in analysed if uid in instances] or list(instances.values())
            if not paths:
                skipped["no readable image"] += 1
                continue
            header = _header(paths[0])
            part = result.body_part if result else body_part_of(None, header)
            if part not in BODY_PARTS:
                skipped["unknown body part"] += 1
                continue
            original = latest.get((study.key, "original"))
            records.append({
                "key": study.key, "paths": paths, "patient_id": header["PatientID"] or study.key,
                "study_date": header["StudyDate"], "body_part": part, "label": int(final.finding == "abnormal"),
                "model_abnormal": (original.finding == "abnormal") if original else bool(result and result.abnormal),
                "reviewer_abnormal": final.finding == "abnormal", "unattributed": final.unattributed,
            })
    finally:
        store.close()
    return records, skipped


def _anonymise(records: list[dict]) -> None:
    """``patient``: ``patientNNNNN``, the same for every study of a PatientID."""
    digests = sorted({hashlib.sha256(r["patient_id"].encode()).hexdigest() for r in records})
    numbers = {digest: n for n, digest in enumerate(digests, start=1)}
    for record in records:
        record["patient"] = f"patient{numbers[hashlib.sha256(record['patient_id'].encode()).hexdigest()]:05d}"


def _split(records: list[dict], valid_fraction: float, seed: int) -> None:
    """``split`` by patient; every body part with two patients or more gets a valid patient, and the
    valid split gets at least one patient whenever there are two."""
    from mura_monai.data.splits import holdout_split

    _, held = holdout_split(records, fraction=valid_fraction, seed=seed, group_key="patient", stratify_key="body_part")
    if not held and valid_fraction > 0:
        _, held = holdout_split(records, fraction=valid_fraction, seed=seed, group_key="patient", stratify_key=None)
    held_patients = {r["patient"] for r in held}
    for record in records:
        record["split"] = "valid" if record["patient"] in held_patients else "train"


def export_labels(config: ListenerConfig, out: str | Path, valid_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the MURA root and the agreement table under ``out``; returns a summary."""
    out = Path(out)
    if (out / "MURA-v1.1").exists():
        raise ValueError(f"{out / 'MURA-v1.1'} already exists: export into a new folder")
    records, skipped = _reviewed_studies(config)
    _anonymise(records)
    _split(records, valid_fraction, seed)
    csv_rows: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "valid": ([], [])}
    studies_per_patient: dict[str, int] = {}
    exported = []
    for record in sorted(records, key=lambda r: (r["patient"], r["study_date"], r["key"])):
        n = studies_per_patient[record["patient"]] = studies_per_patient.get(record["patient"], 0) + 1
        suffix = "positive" if record["label"] else "negative"
        rel = f"MURA-v1.1/{record['split']}/{record['body_part']}/{record['patient']}/study{n}_{suffix}"
        (out / rel).mkdir(parents=True, exist_ok=True)
        images = []
        for k, path in enumerate(record["paths"], start=1):
            try:
                png = radiograph_png(Path(path), max_side=4096)
            except ValueError as exc:  # an image the model could not read either
                logger.warning("image left out of the export", extra={"reason": str(exc)[:200]})
                continue
            (out / rel / f"image{k}.png").write_bytes(png)
            images.append(f"{rel}/image{k}.png")
        if not images:
            skipped["no readable image"] += 1
            continue
        csv_rows[record["split"]][0].extend(images)
        csv_rows[record["split"]][1].append(f"{rel}/,{record['label']}")
        exported.append(record)
    for split, (images, studies) in csv_rows.items():
        (out / "MURA-v1.1").mkdir(parents=True, exist_ok=True)
        (out / "MURA-v1.1" / f"{split}_image_paths.csv").write_text("".join(f"{line}\n" for line in images))
        (out / "MURA-v1.1" / f"{split}_labeled_studies.csv").write_text("".join(f"{line}\n" for line in studies))
    rows = agreement_rows(exported)
    csv_path, md_path = write_agreement(rows, out)
    return {"root": str(out), "studies": {split: len(rows_[1]) for split, rows_ in csv_rows.items()},
            "images": {split: len(rows_[0]) for split, rows_ in csv_rows.items()},
            "skipped": skipped, "agreement": {k: None if isinstance(v, float) and math.isnan(v) else v
                                              for k, v in rows[-1].items()},
            "agreement_csv": str(csv_path), "agreement_md": str(md_path),
            "study_ids": [study_id(record["key"]) for record in exported]}
