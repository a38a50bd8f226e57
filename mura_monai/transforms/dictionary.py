"""Dictionary-based wrappers of :mod:`mura_monai.transforms.array`.

Each ``Xd`` transform applies the array transform ``X`` to the items of a data dictionary named by
``keys`` (other items pass through untouched); ``allow_missing_keys=True`` skips absent keys instead of
raising. As in MONAI, every class also has the aliases ``XD`` and ``XDict``.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep

from mura_monai.transforms.array import (
    Clahe,
    EdgeEnhance,
    GBPNormalize,
    IntensityRescale,
    LaplacianSharpen,
    RandIntensityRescale,
    ResizeWithAspectPad,
)

__all__ = [
    "Clahed",
    "ClaheD",
    "ClaheDict",
    "EdgeEnhanced",
    "EdgeEnhanceD",
    "EdgeEnhanceDict",
    "LaplacianSharpend",
    "LaplacianSharpenD",
    "LaplacianSharpenDict",
    "IntensityRescaled",
    "IntensityRescaleD",
    "IntensityRescaleDict",
    "RandIntensityRescaled",
    "RandIntensityRescaleD",
    "RandIntensityRescaleDict",
    "GBPNormalized",
    "GBPNormalizeD",
    "GBPNormalizeDict",
    "ResizeWithAspectPadd",
    "ResizeWithAspectPadD",
    "ResizeWithAspectPadDict",
]


class _ArrayWrapperd(MapTransform):
    """Applies ``self.transform`` (an array transform) to every selected key."""

    transform: Clahe | EdgeEnhance | LaplacianSharpen | IntensityRescale | GBPNormalize

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class Clahed(_ArrayWrapperd):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.Clahe` (CLAHE, Regalla and Kudikala).

    Args:
        keys: keys of the images to equalise. See also: :class:`monai.transforms.MapTransform`.
        clip_limit: contrast limit per tile (OpenCV ``clipLimit``).
        tile_grid_size: number of tiles (rows, columns).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = Clahe.backend

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float = 2.0,
        tile_grid_size: tuple[int, int] = (8, 8),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Clahe(clip_limit=clip_limit, tile_grid_size=tile_grid_size)


class EdgeEnhanced(_ArrayWrapperd):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.EdgeEnhance` (Patel et al.).

    Args:
        keys: keys of the images to filter. See also: :class:`monai.transforms.MapTransform`.
        method: ``"sobel"``, ``"prewitt"``, ``"roberts"`` or ``"canny"``.
        mode: ``"replace"`` (edge map) or ``"add"`` (image + alpha * edges).
        alpha: weight of the edges in ``"add"`` mode.
        canny_thresholds: (low, high) hysteresis thresholds of Canny on the 0..255 scale.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = EdgeEnhance.backend

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "sobel",
        mode: str = "replace",
        alpha: float = 1.0,
        canny_thresholds: tuple[float, float] = (50, 150),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = EdgeEnhance(method=method, mode=mode, alpha=alpha, canny_thresholds=canny_thresholds)


class LaplacianSharpend(_ArrayWrapperd):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.LaplacianSharpen` (Patel et al.).

    Args:
        keys: keys of the images to sharpen. See also: :class:`monai.transforms.MapTransform`.
        strength: how much of the Laplacian is subtracted (0: identity; Patel et al. use 1.5 and 3.0).
        ksize: aperture of ``cv2.Laplacian``.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = LaplacianSharpen.backend

    def __init__(
        self, keys: KeysCollection, strength: float = 1.5, ksize: int = 3, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LaplacianSharpen(strength=strength, ksize=ksize)


class IntensityRescaled(_ArrayWrapperd):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.IntensityRescale` (Huschauer).

    Args:
        keys: keys of the images to rescale. See also: :class:`monai.transforms.MapTransform`.
        lower: percentile that becomes 0.
        upper: percentile that becomes 1.
        channel_wise: percentiles per channel instead of over the whole image.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = IntensityRescale.backend

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.0,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = IntensityRescale(lower=lower, upper=upper, channel_wise=channel_wise)


class RandIntensityRescaled(RandomizableTransform, MapTransform):
    """Dictionary-based version of :class:`mura_monai.transforms.RandIntensityRescale` (Huschauer).

    One draw per call: all selected keys are rescaled with the same random percentiles (or none is).

    Args:
        keys: keys of the images to rescale. See also: :class:`monai.transforms.MapTransform`.
        prob: probability of rescaling.
        lower_range: (min, max) of the lower percentile.
        upper_range: (min, max) of the upper percentile.
        channel_wise: percentiles per channel instead of over the whole image.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = RandIntensityRescale.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        lower_range: tuple[float, float] = (0.0, 5.0),
        upper_range: tuple[float, float] = (95.0, 100.0),
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rescaler = RandIntensityRescale(
            prob=1.0, lower_range=lower_range, upper_range=upper_range, channel_wise=channel_wise
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandIntensityRescaled:
        super().set_random_state(seed, state)
        self.rescaler.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_dst_type(d[key], dst=d[key], dtype=np.float32)[0]
            return d
        self.rescaler.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.rescaler(d[key], randomize=False)
        return d


class GBPNormalized(_ArrayWrapperd):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.GBPNormalize` (Huschauer).

    Args:
        keys: keys of the images to normalise. See also: :class:`monai.transforms.MapTransform`.
        clip: clip the result to [0, 1].
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = GBPNormalize.backend

    def __init__(self, keys: KeysCollection, clip: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = GBPNormalize(clip=clip)


class ResizeWithAspectPadd(MapTransform, InvertibleTransform):
    """Dictionary-based wrapper of :class:`mura_monai.transforms.ResizeWithAspectPad`.

    Args:
        keys: keys of the images to resize. See also: :class:`monai.transforms.MapTransform`.
        spatial_size: side of the square output.
        mode: interpolation mode, one for all keys or a sequence with one per key (e.g. ``("area",
            "nearest")`` for an image and its mask).
        pad_value: intensity of the padding, one for all keys or one per key.
        align_corners: as in ``torch.nn.functional.interpolate``, one for all keys or one per key.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ResizeWithAspectPad.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int = 320,
        mode: str | Sequence[str] = "area",
        pad_value: float | Sequence[float] = 0.0,
        align_corners: bool | None | Sequence[bool | None] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        n = len(self.keys)
        self.resizers = {
            key: ResizeWithAspectPad(spatial_size=spatial_size, mode=m, pad_value=p, align_corners=a)
            for key, m, p, a in zip(
                self.keys,
                ensure_tuple_rep(mode, n),
                ensure_tuple_rep(pad_value, n),
                ensure_tuple_rep(align_corners, n),
            )
        }

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key].inverse(d[key])
        return d


ClaheD = ClaheDict = Clahed
EdgeEnhanceD = EdgeEnhanceDict = EdgeEnhanced
LaplacianSharpenD = LaplacianSharpenDict = LaplacianSharpend
IntensityRescaleD = IntensityRescaleDict = IntensityRescaled
RandIntensityRescaleD = RandIntensityRescaleDict = RandIntensityRescaled
GBPNormalizeD = GBPNormalizeDict = GBPNormalized
ResizeWithAspectPadD = ResizeWithAspectPadDict = ResizeWithAspectPadd
