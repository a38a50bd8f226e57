"""Named image-enhancement presets, so a bundle override is one word (``--enhancement clahe``).

The papers compare preprocessing variants: CLAHE (Regalla and Kudikala), edge maps and Laplacian
sharpening (Patel et al.), intensity rescaling (Huschauer); :mod:`mura_monai.transforms.array`
cites them in full. A name rather than a transform list can be stored beside the checkpoint and
replayed at inference, so a model always sees what it was trained on.
"""
from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import MapTransform

__all__ = ["ENHANCEMENTS", "enhancement_transforms"]

ENHANCEMENTS = (
    "none",
    "clahe",
    "sobel",
    "prewitt",
    "roberts",
    "canny",
    "laplacian1.5",
    "laplacian3.0",
    "intensity_rescale",
)


def enhancement_transforms(name: str = "none", keys: str | Sequence[str] = "image") -> list[MapTransform]:
    """Dictionary transforms of one enhancement preset (``ENHANCEMENTS``); ``none`` is empty."""
    from mura_monai.transforms.dictionary import Clahed, EdgeEnhanced, IntensityRescaled, LaplacianSharpend

    if name == "none":
        return []
    if name == "clahe":
        return [Clahed(keys=keys)]
    if name in ("sobel", "prewitt", "roberts", "canny"):
        return [EdgeEnhanced(keys=keys, method=name, mode="add")]
    if name.startswith("laplacian") and name in ENHANCEMENTS:
        return [LaplacianSharpend(keys=keys, strength=float(name.removeprefix("laplacian")))]
    if name == "intensity_rescale":
        return [IntensityRescaled(keys=keys)]
    raise ValueError(f"unknown enhancement {name!r}; choose one of {', '.join(ENHANCEMENTS)}")
