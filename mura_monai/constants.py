"""Names shared by the data layer, the networks and the reports.

MURA's seven study types, in the order used for class indices everywhere (the router's classes,
per-body-part loss weights, metrics tables).
"""
from __future__ import annotations

BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
BODY_PART_INDEX: dict[str, int] = {name: i for i, name in enumerate(BODY_PARTS)}

# DICOM BodyPartExamined values (PS3.16 CID 4031 defined terms) for each MURA study type.
DICOM_BODY_PART: dict[str, str] = {
    "XR_ELBOW": "ELBOW",
    "XR_FINGER": "FINGER",
    "XR_FOREARM": "FOREARM",
    "XR_HAND": "HAND",
    "XR_HUMERUS": "HUMERUS",
    "XR_SHOULDER": "SHOULDER",
    "XR_WRIST": "WRIST",
}

SPLITS: tuple[str, ...] = ("train", "valid")

# The storage classes a plain radiograph arrives in (CR, DX for presentation and for processing):
# the listener accepts exactly these, and the reader takes them as radiographs when Modality is
# missing. Held as strings so that this module stays free of imports.
RADIOGRAPH_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
)

# Which studies get CAM heatmaps and their secondary captures (an ensemble's and the listener's
# ``heatmap_studies``): every one, those called abnormal, those the worklist puts first (abnormal
# or uncertain), or none.
HEATMAP_STUDIES: tuple[str, ...] = ("all", "abnormal", "uncertain", "none")

# What can score a bundle's images (mura_monai.backends), and what a config or a command line may
# ask for; here, beside the other names, so that reading a config does not import torch.
BACKENDS: tuple[str, ...] = ("torch", "torchscript", "onnxruntime")
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
