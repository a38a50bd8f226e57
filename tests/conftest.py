"""Shared fixtures: a hand-written MURA root and a synthetic one made by the project's generator."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

# What `make test-quick` leaves out: whole trainings of the bundles, the running listener with
# Orthanc and a browser, the fuzz campaigns and the corpus through a trained ensemble. Everything
# else (transforms, networks, losses, metrics, DICOM writers, the store) stays in the quick run.
_SLOW = ("tests/bundles/", "tests/listener/", "tests/fuzz/", "tests/conformance/test_infer_corpus.py",
         "tests/engines/test_distributed.py")


def pytest_collection_modifyitems(config, items):
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        if where.startswith(_SLOW) and not where.endswith(("test_overrides.py", "test_architecture.py")):
            item.add_marker(pytest.mark.slow)


# (split, body part, patient, study, label, number of views)
TINY_STUDIES = [
    ("train", "XR_WRIST", "patient00001", "study1_positive", 1, 2),
    ("train", "XR_WRIST", "patient00002", "study1_negative", 0, 3),
    ("train", "XR_HAND", "patient00003", "study1_negative", 0, 1),
    ("train", "XR_HAND", "patient00003", "study2_positive", 1, 2),
    ("valid", "XR_ELBOW", "patient00004", "study1_positive", 1, 2),
    ("valid", "XR_ELBOW", "patient00005", "study1_negative", 0, 1),
]


def write_mura_root(root: Path, studies=TINY_STUDIES) -> Path:
    """A MURA-v1.1 root in Stanford's exact layout (no CSV headers, trailing slash on studies)."""
    rng = np.random.default_rng(0)
    rows = {"train": ([], []), "valid": ([], [])}
    for split, part, patient, study, label, views in studies:
        rel = f"MURA-v1.1/{split}/{part}/{patient}/{study}"
        (root / rel).mkdir(parents=True, exist_ok=True)
        rows[split][1].append(f"{rel}/,{label}")
        for view in range(1, views + 1):
            image = rng.integers(0, 255, (40 + 8 * view, 32), dtype=np.uint8)
            cv2.imwrite(str(root / rel / f"image{view}.png"), image)
            rows[split][0].append(f"{rel}/image{view}.png")
    for split, (images, labelled) in rows.items():
        (root / "MURA-v1.1" / f"{split}_image_paths.csv").write_text("\n".join(images) + "\n")
        (root / "MURA-v1.1" / f"{split}_labeled_studies.csv").write_text("\n".join(labelled) + "\n")
    return root


@pytest.fixture
def tiny_mura_root(tmp_path: Path) -> Path:
    return write_mura_root(tmp_path / "mura")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic MURA root with DICOM copies, shared by the bundle and CLI tests."""
    from mura_monai.data.synthetic import generate_mura_root

    base = tmp_path_factory.mktemp("synth")
    generate_mura_root(base / "mura", patients=24, seed=3, dicom_dir=base / "dicom")
    return base / "mura"
