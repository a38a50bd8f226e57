"""Deterministic synthetic MURA-like data: a MURA root laid out exactly like Stanford's MURA-v1.1.

    generate_mura_root(out_dir, patients, seed=0, dicom_dir=None, valid_fraction=0.2, progress=False)

writes ``out_dir/MURA-v1.1/{train,valid}_{image_paths,labeled_studies}.csv`` (no header, paths
relative to ``out_dir``), ``MURA-v1.1/patient_metadata.csv`` (age and sex, see
:func:`patient_demographics`) and the 8-bit grayscale PNGs they list:
``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png``.

* Patients are numbered ``patient00001`` .. in train first, then valid (as in MURA); a patient
  belongs to one split and one body part, and has 1 or 2 studies (``study1``, ``study2``).
* The seven body parts are balanced within each split; about 40 % of the studies of every body
  part are abnormal (MURA's rate); 1 to 4 views per study; long side 256..512 px, aspect 0.6..1.5.
* Abnormal studies carry fractures, orthopaedic hardware or bone lesions (see
  :mod:`mura_monai.data.synthetic_anatomy`), visible in most of their views. Side markers,
  rulers, collimation, text, exposure and rotation appear in both classes at the same rates.
* Same ``(patients, seed, valid_fraction)`` gives byte-identical files. Every study draws from its
  own random streams keyed by ``(seed, patient, study)``, so its pixels do not depend on the order
  of generation (the *plan*, which patient gets which body part and label, depends on all three).

With ``dicom_dir`` the same images are also written as DICOM (see
:mod:`mura_monai.data.synthetic_dicom`): ``dicom_dir/<split>/patientNNNNN/studyN/imageN.dcm``
plus ``dicom_dir/index.csv``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mura_monai.constants import BODY_PARTS, SPLITS
from mura_monai.data import synthetic_anatomy as anatomy

__all__ = ["generate_mura_root", "plan_dataset", "render_study", "StudyPlan", "GENERATOR_VERSION"]

GENERATOR_VERSION = "2"  # 2: findings calibrated to be learnable at 128 px from ~140 patients (see docs)
MURA_DIR = "MURA-v1.1"
ABNORMAL_RATE = 0.4
_MARKER = ".synthetic.json"
_VIEW_P = np.array([0.1, 0.3, 0.4, 0.2])  # 1, 2, 3, 4 views; mean 2.7 images per study like MURA
_STREAM_ANATOMY, _STREAM_ABNORMAL, _STREAM_VIEW, _STREAM_CONFOUND = 1, 2, 3, 4
_STREAM_DEMOGRAPHICS = 7  # 5 and 6 are synthetic_dicom's


@dataclass(frozen=True)
class StudyPlan:
    seed: int
    split: str
    patient: int
    study: int
    body_part: str
    label: int  # 1 abnormal, 0 normal
    n_views: int
    dicom_variant: int  # 0..7: modality x photometric x transfer syntax, balanced over studies

    @property
    def patient_dir(self) -> str:
        return f"patient{self.patient:05d}"

    @property
    def study_dir(self) -> str:
        return f"study{self.study}_{'positive' if self.label else 'negative'}"

    @property
    def rel_dir(self) -> str:
        """``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/`` (with the trailing slash)."""
        return f"{MURA_DIR}/{self.split}/{self.body_part}/{self.patient_dir}/{self.study_dir}/"

    def image_paths(self) -> list[str]:
        return [f"{self.rel_dir}image{i + 1}.png" for i in range(self.n_views)]

    def rng(self, stream: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.patient, self.study, stream, *extra]))


def plan_dataset(patients: int, seed: int = 0, valid_fraction: float = 0.2) -> list[StudyPlan]:
    """Which patient is in which split, with which body part, studies, labels and view counts."""
    if int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    patients = int(patients)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED, patients]))
    n_valid = int(round(patients * valid_fraction))
    if valid_fraction > 0 and patients >= 2:
        n_valid = min(max(n_valid, 1), patients - 1)
    n_train = patients - n_valid
    # (split, patient, study, part, n_views)
    rows: list[list] = []
    for split, first, count in (("train", 1, n_train), ("valid", n_train + 1, n_valid)):
        parts: list[str] = []
        while len(parts) < count:
            parts += [BODY_PARTS[i] for i in rng.permutation(len(BODY_PARTS))]
        for k in range(count):
            n_studies = 2 if rng.random() < 0.25 else 1
            for s in range(1, n_studies + 1):
                rows.append([split, first + k, s, parts[k], int(rng.choice(4, p=_VIEW_P)) + 1])
    labels = np.zeros(len(rows), dtype=int)
    for split in SPLITS:
        for part in BODY_PARTS:
            idx = [i for i, r in enumerate(rows) if r[0] == split and r[3] == part]
            if not idx:
                continue
            n_abn = int(np.floor(ABNORMAL_RATE * len(idx) + rng.random()))
            labels[np.array(idx)[rng.permutation(len(idx))[:n_abn]]] = 1
    variants: list[int] = []
    while len(variants) < len(rows):
        variants += [int(v) for v in rng.permutation(8)]
    return [StudyPlan(int(seed), r[0], r[1], r[2], r[3], int(labels[i]), r[4], variants[i]) for i, r in enumerate(rows)]


def study_specs(study: StudyPlan) -> dict:
    """Everything random about a study, from its own streams (anatomy, abnormalities, views...)."""
    anat = anatomy.sample_anatomy(study.body_part, study.rng(_STREAM_ANATOMY))
    abn = anatomy.sample_abnormalities(study.body_part, study.n_views, study.rng(_STREAM_ABNORMAL)) if study.label else []
    kinds = anatomy.VIEW_KINDS[study.body_part]
    views = [anatomy.sample_view(study.body_part, study.rng(_STREAM_VIEW, i)) for i in range(study.n_views)]
    conf = [anatomy.sample_confounders(anat["laterality"], study.rng(_STREAM_CONFOUND, i)) for i in range(study.n_views)]
    return {"anatomy": anat, "abnormalities": abn, "views": views, "confounders": conf,
            "view_kinds": [kinds[i][0] for i in range(study.n_views)],
            "view_positions": [kinds[i][1] for i in range(study.n_views)]}


def render_study(study: StudyPlan, abnormal: bool | None = None, with_masks: bool = False,
                 specs: dict | None = None, abnormalities: list[dict] | None = None):
    """The study's images (uint8 arrays); ``abnormal=False`` renders an abnormal study without its
    abnormalities (everything else identical), ``abnormalities`` forces a list of them.
    With ``with_masks`` returns ``(images, bone_masks)``."""
    specs = specs or study_specs(study)
    abn = specs["abnormalities"] if abnormalities is None else abnormalities
    show = bool(study.label) if abnormal is None else bool(abnormal)
    images, masks = [], []
    for i in range(study.n_views):
        img, mask = anatomy.render_view(specs["anatomy"], specs["view_kinds"][i], specs["views"][i], abn, i,
                                        specs["confounders"][i], abnormal=show)
        images.append(img)
        masks.append(mask)
    return (images, masks) if with_masks else images


def _prepare(dir_: Path, what: str, subdirs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Empty a folder this generator wrote before; refuse to touch anything else."""
    if not dir_.exists():
        return
    if (dir_ / _MARKER).is_file():
        for name in subdirs:
            shutil.rmtree(dir_ / name, ignore_errors=True)
        for name in files:
            (dir_ / name).unlink(missing_ok=True)
        return
    if any(dir_.iterdir()):
        raise FileExistsError(f"{dir_} exists and was not written by the synthetic generator; refusing to "
                              f"overwrite it ({what}): choose an empty or new folder")


def patient_demographics(seed: int, patient: int, abnormal: bool) -> tuple[str, int]:
    """``(sex, age at the first study)`` of a synthetic patient.

    Patients with an abnormal study are older on average (mean 56 vs 40 years, sd 15), as
    degenerative disease and fixation hardware are in real clinics; the pixels do not depend on
    it, so a metadata model has something to find that the image-only model cannot see.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, _STREAM_DEMOGRAPHICS]))
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(np.clip(round(rng.normal(56.0 if abnormal else 40.0, 15.0)), 18, 89))
    return sex, age


def plan_demographics(plan: list[StudyPlan]) -> dict[int, tuple[str, int]]:
    """:func:`patient_demographics` of every patient of a plan."""
    abnormal: dict[int, bool] = {}
    for study in plan:
        abnormal[study.patient] = abnormal.get(study.patient, False) or bool(study.label)
    seed = plan[0].seed if plan else 0
    return {p: patient_demographics(seed, p, a) for p, a in sorted(abnormal.items())}


def _write_csv_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", newline="\n", encoding="ascii") as f:
        for line in lines:
            f.write(line + "\n")


def generate_mura_root(out_dir, patients: int, seed: int = 0, dicom_dir=None, valid_fraction: float = 0.2,
                       progress: bool = False) -> dict:
    """Write a synthetic MURA root at ``out_dir`` (and DICOM studies at ``dicom_dir``); return a summary.

    The summary holds ``root``, ``mura_dir``, ``seed``, per split ``splits[split]`` = ``{patients,
    studies, images, abnormal_studies, abnormal_fraction}``, totals ``patients``, ``studies``,
    ``images``, ``abnormal_fraction``, ``body_parts[part]`` = ``{studies, images, abnormal_studies}``,
    ``csv`` (the four CSV paths), ``dicom_dir``, ``dicom_index``, ``dicom_files`` and ``seconds``.
    """
    t0 = time.perf_counter()
    seed = int(seed)
    plan = plan_dataset(patients, seed, valid_fraction)
    root = Path(out_dir)
    mura = root / MURA_DIR
    csv_names = tuple(f"{s}_{k}.csv" for s in SPLITS for k in ("image_paths", "labeled_studies")) + ("patient_metadata.csv",)
    _prepare(mura, "MURA root", SPLITS, csv_names)
    mura.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "mura_monai.data.synthetic", "version": GENERATOR_VERSION, "patients": int(patients),
            "seed": seed, "valid_fraction": float(valid_fraction)}
    (mura / _MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    writer = None
    if dicom_dir is not None:
        from mura_monai.data import synthetic_dicom

        ddir = Path(dicom_dir)
        _prepare(ddir, "DICOM folder", SPLITS, ("index.csv",))
        ddir.mkdir(parents=True, exist_ok=True)
        (ddir / _MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        writer = synthetic_dicom.DicomStudyWriter(ddir)

    demographics = plan_demographics(plan)
    image_lines = {s: [] for s in SPLITS}
    study_lines = {s: [] for s in SPLITS}
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(plan), desc="synth studies", unit="study", file=sys.stderr)
        except ImportError:  # pragma: no cover
            bar = None
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    for study in plan:
        specs = study_specs(study)
        images = render_study(study, specs=specs)
        sdir = root / study.rel_dir
        sdir.mkdir(parents=True, exist_ok=True)
        paths = study.image_paths()
        for rel, img in zip(paths, images):
            if not cv2.imwrite(str(root / rel), img, png_params):
                raise OSError(f"could not write {root / rel}")
        image_lines[study.split] += paths
        study_lines[study.split].append(f"{study.rel_dir},{study.label}")
        if writer is not None:
            writer.write_study(study, specs, images, paths, demographics=demographics[study.patient])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    csv_paths = {}
    for s in SPLITS:
        for kind, lines in (("image_paths", image_lines[s]), ("labeled_studies", study_lines[s])):
            p = mura / f"{s}_{kind}.csv"
            _write_csv_lines(p, lines)
            csv_paths[f"{s}_{kind}"] = str(p)
    metadata_csv = mura / "patient_metadata.csv"
    _write_csv_lines(metadata_csv,
                     ["patient,age,sex"] + [f"patient{p:05d},{age},{sex}" for p, (sex, age) in demographics.items()])
    csv_paths["patient_metadata"] = str(metadata_csv)
    if writer is not None:
        writer.close()

    summary: dict = {"root": str(root), "mura_dir": str(mura), "seed": seed, "valid_fraction": float(valid_fraction),
                     "splits": {}, "body_parts": {}, "csv": csv_paths}
    for s in SPLITS:
        st = [p for p in plan if p.split == s]
        n_abn = sum(p.label for p in st)
        summary["splits"][s] = {"patients": len({p.patient for p in st}), "studies": len(st),
                                "images": sum(p.n_views for p in st), "abnormal_studies": n_abn,
                                "abnormal_fraction": n_abn / len(st) if st else 0.0}
    for part in BODY_PARTS:
        st = [p for p in plan if p.body_part == part]
        summary["body_parts"][part] = {"studies": len(st), "images": sum(p.n_views for p in st),
                                       "abnormal_studies": sum(p.label for p in st)}
    summary["patients"] = len({p.patient for p in plan})
    summary["studies"] = len(plan)
    summary["images"] = sum(p.n_views for p in plan)
    summary["abnormal_fraction"] = sum(p.label for p in plan) / len(plan)
    summary["dicom_dir"] = str(dicom_dir) if dicom_dir is not None else None
    summary["dicom_index"] = str(writer.index_path) if writer is not None else None
    summary["dicom_files"] = writer.count if writer is not None else 0
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
