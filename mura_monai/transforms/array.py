"""Array transforms reproducing the papers' radiograph preprocessing.

Every transform here takes one channel-first image, shape ``(C, H, W)``, as a numpy array, a torch
Tensor or a MONAI ``MetaTensor``, and returns the same type (a ``MetaTensor`` keeps its meta data).

Intensity contract: images are float intensities in ``[0, 1]`` (the PNG/DICOM readers of this package
scale to that range). Outputs are ``float32``; transforms whose maths can leave ``[0, 1]`` clip back
into it unless their docstring says otherwise (:class:`GBPNormalize`).

The maths is OpenCV's, MONAI's or numpy's; this module only adapts shapes, types and ranges.

Papers referred to below:

* Patel et al. -- edge enhancement (Sobel, Prewitt, Roberts, Canny) and Laplacian sharpening of MURA
  radiographs before classification: Patel K., Patel V., Patel S., Patel D., "Deep Learning For
  Abnormalities Detection in Musculoskeletal Radiographs".
* Regalla and Kudikala -- contrast-limited adaptive histogram equalisation (CLAHE) of the lightness
  channel: Regalla S.T., Kudikala S.P., "Research on Musculoskeletal Abnormality Detection using Deep
  Learning Techniques", B.Tech report, IIITDM Kurnool, 2023.
* Huschauer -- intensity rescaling ("shrinking/expanding the intensity exposure") as augmentation,
  and the mean/std normalisation used for guided back-propagation saliency maps: Huschauer S., "Deep
  Learning-based Classification of Musculoskeletal Radiographs - Learn to Zoom from Network
  Response", ZHAW.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    InvertibleTransform,
    RandomizableTransform,
    Resize,
    ScaleIntensityRangePercentiles,
    SpatialPad,
    Transform,
)
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = [
    "Clahe",
    "EdgeEnhance",
    "LaplacianSharpen",
    "IntensityRescale",
    "RandIntensityRescale",
    "GBPNormalize",
    "ResizeWithAspectPad",
]

_UINT8_MAX = 255.0


def _check_chw(img: NdarrayOrTensor, name: str) -> None:
    """Raise a ValueError unless ``img`` is a channel-first 2D image ``(C, H, W)``."""
    if img.ndim != 3:
        raise ValueError(f"{name} expects a channel-first 2D image of shape (C, H, W), got shape {tuple(img.shape)}.")


def _to_numpy(img: NdarrayOrTensor) -> np.ndarray:
    """``img`` as a contiguous float32 numpy array (OpenCV wants C-contiguous memory)."""
    arr: np.ndarray = convert_data_type(img, np.ndarray, dtype=np.float32)[0]
    return np.ascontiguousarray(arr)


def _like(out: NdarrayOrTensor, img: NdarrayOrTensor, dtype: DtypeLike | torch.dtype = np.float32) -> NdarrayOrTensor:
    """``out`` converted to ``img``'s type and device, as float32; a MetaTensor ``img`` lends its meta data."""
    return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


def _to_uint8(channel: np.ndarray) -> np.ndarray:
    """A float [0, 1] plane quantised to 0..255 (rounded, out-of-range values clipped)."""
    return np.rint(np.clip(channel, 0.0, 1.0) * _UINT8_MAX).astype(np.uint8)


class Clahe(Transform):
    """Contrast-limited adaptive histogram equalisation (CLAHE) with OpenCV.

    Radiographs put most of the anatomy into a narrow band of grey levels; CLAHE equalises the histogram
    tile by tile so that fine bone texture and cortical edges gain local contrast, while the clip limit
    stops noise in flat regions being amplified. Regalla and Kudikala apply it before classification: it
    converts the image to LAB, runs ``cv2.createCLAHE`` on the lightness channel L only, merges the
    channels back and converts to the original colour space.

    * 1-channel image: CLAHE on the image itself.
    * 3-channel image (taken as RGB): CLAHE on the L channel of CIE LAB, a and b kept unchanged, so only
      the lightness changes (a grey RGB image stays grey).
    * Any other channel count raises a ValueError.

    Quantisation: OpenCV's CLAHE works on integer images only, and the image is quantised to **8 bits**
    (0..255) for it, then returned as float32 in [0, 1] (so the output has at most 256 levels). 8 bits
    rather than 16 because (a) MURA's radiographs are 8-bit PNGs, so nothing is lost for them, (b)
    Regalla and Kudikala ran CLAHE on 8-bit images, and (c) OpenCV's ``clipLimit`` is relative to the
    mean histogram bin count: with 65536 bins the per-bin limit of an ordinary tile rounds to 1, so the
    same ``clip_limit`` would mean something quite different on 16-bit data. In the RGB path only L is quantised (L in
    [0, 100] to 0..255); the colour channels a, b stay in float.

    Args:
        clip_limit: contrast limit per tile, as a multiple of the mean histogram bin count (OpenCV's
            ``clipLimit``); larger values give stronger local contrast and more noise.
            Regalla and Kudikala: 2.0.
        tile_grid_size: number of tiles (rows, columns) the image is divided into; each tile gets its own
            equalisation, so more tiles give more local (and less smooth) contrast.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, clip_limit: float = 2.0, tile_grid_size: tuple[int, int] = (8, 8)) -> None:
        if clip_limit <= 0:
            raise ValueError(f"clip_limit must be positive, got {clip_limit}.")
        tile_grid_size = tuple(int(t) for t in tile_grid_size)
        if len(tile_grid_size) != 2 or min(tile_grid_size) < 1:
            raise ValueError(f"tile_grid_size must be two positive ints (rows, columns), got {tile_grid_size}.")
        self.clip_limit = float(clip_limit)
        self.tile_grid_size: tuple[int, int] = tile_grid_size  # type: ignore[assignment]

    def _clahe_uint8(self, plane: np.ndarray) -> np.ndarray:
        # cv2 takes tileGridSize as (width, height) = (columns, rows)
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=self.tile_grid_size[::-1])
        return clahe.apply(plane)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Apply CLAHE to ``img`` of shape (1, H, W) or (3, H, W), float in [0, 1]."""
        _check_chw(img, type(self).__name__)
        arr = _to_numpy(img)
        channels = arr.shape[0]
        if channels == 1:
            out = self._clahe_uint8(_to_uint8(arr[0]))[None].astype(np.float32) / _UINT8_MAX
        elif channels == 3:
            rgb = np.ascontiguousarray(np.clip(arr, 0.0, 1.0).transpose(1, 2, 0))
            lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)  # float input: L in [0, 100]
            lightness = _to_uint8(lab[..., 0] / 100.0)
            lab[..., 0] = self._clahe_uint8(lightness).astype(np.float32) * (100.0 / _UINT8_MAX)
            out = np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0.0, 1.0).transpose(2, 0, 1)
        else:
            raise ValueError(
                f"Clahe supports 1-channel (grey) or 3-channel (RGB) images, got {channels} channels "
                f"(shape {tuple(arr.shape)})."
            )
        return _like(np.ascontiguousarray(out, dtype=np.float32), img)


class EdgeEnhance(Transform):
    """Edge detection / enhancement with a classical operator, per channel (Patel et al.).

    Patel et al. feed the classifier radiographs whose bone outlines and fracture lines are emphasised by an
    edge operator. Each channel is filtered on its own:

    * ``"sobel"``: magnitude of ``cv2.Sobel`` x and y derivatives (3x3);
    * ``"prewitt"``: magnitude of the two Prewitt 3x3 responses (``cv2.filter2D``);
    * ``"roberts"``: magnitude of the two Roberts-cross 2x2 responses (``cv2.filter2D``), the most local
      and noise-sensitive of the four;
    * ``"canny"``: binary ``cv2.Canny`` edge map of the 8-bit quantised image (0 or 1).

    The gradient magnitudes are normalised to [0, 1] by dividing by their maximum in the channel (a flat
    channel, with no edges, gives zeros). Note that this per-image normalisation also stretches the
    response of a nearly flat, noisy image to the full range. Borders are replicated, so the image
    border itself is not an edge.

    Args:
        method: edge operator, one of ``"sobel"``, ``"prewitt"``, ``"roberts"``, ``"canny"``.
        mode: ``"replace"`` outputs the normalised edge map instead of the image; ``"add"`` outputs
            ``image + alpha * edges`` clipped to [0, 1], i.e. the radiograph with its edges brightened.
        alpha: weight of the edge map in ``"add"`` mode (ignored in ``"replace"`` mode).
        canny_thresholds: (low, high) hysteresis thresholds of ``cv2.Canny``, on the 0..255 grey scale;
            gradients above ``high`` start an edge, those above ``low`` continue one.
    """

    backend = [TransformBackends.NUMPY]

    METHODS: tuple[str, ...] = ("sobel", "prewitt", "roberts", "canny")
    MODES: tuple[str, ...] = ("replace", "add")

    _KERNELS: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "prewitt": (
            np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], dtype=np.float32),
            np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1]], dtype=np.float32),
        ),
        "roberts": (
            np.array([[1, 0], [0, -1]], dtype=np.float32),
            np.array([[0, 1], [-1, 0]], dtype=np.float32),
        ),
    }

    def __init__(
        self,
        method: str = "sobel",
        mode: str = "replace",
        alpha: float = 1.0,
        canny_thresholds: tuple[float, float] = (50, 150),
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"Unknown edge method {method!r}; allowed: {', '.join(self.METHODS)}.")
        if mode not in self.MODES:
            raise ValueError(f"Unknown edge mode {mode!r}; allowed: {', '.join(self.MODES)}.")
        if len(canny_thresholds) != 2:
            raise ValueError(f"canny_thresholds must be (low, high), got {canny_thresholds}.")
        self.method = method
        self.mode = mode
        self.alpha = float(alpha)
        self.canny_thresholds = (float(canny_thresholds[0]), float(canny_thresholds[1]))

    def edges(self, plane: np.ndarray) -> np.ndarray:
        """Edge map of one float32 (H, W) plane, normalised to [0, 1]."""
        if self.method == "canny":
            low, high = self.canny_thresholds
            return cv2.Canny(_to_uint8(plane), low, high).astype(np.float32) / _UINT8_MAX
        if self.method == "sobel":
            gx = cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        else:
            kx, ky = self._KERNELS[self.method]
            gx = cv2.filter2D(plane, cv2.CV_32F, kx, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.filter2D(plane, cv2.CV_32F, ky, borderType=cv2.BORDER_REPLICATE)
        magnitude = cv2.magnitude(gx, gy)
        peak = float(magnitude.max())
        if peak <= 1e-6:
            return np.zeros_like(magnitude)
        return magnitude / peak

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Edge map (``"replace"``) or edge-enhanced image (``"add"``) of ``img`` (C, H, W) in [0, 1]."""
        _check_chw(img, type(self).__name__)
        arr = _to_numpy(img)
        edges = np.stack([self.edges(np.ascontiguousarray(c)) for c in arr])
        out = edges if self.mode == "replace" else np.clip(arr + self.alpha * edges, 0.0, 1.0)
        return _like(out.astype(np.float32, copy=False), img)


class LaplacianSharpen(Transform):
    """Laplacian sharpening: ``out = img - strength * Laplacian(img)``, clipped to [0, 1].

    Subtracting the Laplacian (second derivative) steepens every intensity transition, making bone
    margins, trabeculae and fracture lines crisper. Patel et al. compare strengths 1.5 and 3.0.
    The Laplacian is ``cv2.Laplacian`` with the given aperture, computed per channel in float32 with
    reflected borders.

    Args:
        strength: how much of the Laplacian is subtracted; 0 returns the image unchanged, larger values
            sharpen (and amplify noise) more. Must be >= 0.
        ksize: aperture of ``cv2.Laplacian`` (1, 3, 5 or 7). With the default 3, OpenCV's kernel is
            ``[[2, 0, 2], [0, -8, 0], [2, 0, 2]]``; with 1 it is the 4-neighbour ``[[0, 1, 0], [1, -4, 1],
            [0, 1, 0]]``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, strength: float = 1.5, ksize: int = 3) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}.")
        if ksize not in (1, 3, 5, 7):
            raise ValueError(f"ksize must be one of 1, 3, 5, 7, got {ksize}.")
        self.strength = float(strength)
        self.ksize = int(ksize)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Sharpen ``img`` (C, H, W), float in [0, 1]."""
        _check_chw(img, type(self).__name__)
        arr = _to_numpy(img)
        if self.strength == 0:
            return _like(arr.copy(), img)
        lap = np.stack([cv2.Laplacian(np.ascontiguousarray(c), cv2.CV_32F, ksize=self.ksize) for c in arr])
        return _like(np.clip(arr - self.strength * lap, 0.0, 1.0).astype(np.float32), img)


def _check_percentiles(lower: float, upper: float) -> None:
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"Need 0 <= lower < upper <= 100 percentiles, got lower={lower}, upper={upper}.")


class IntensityRescale(Transform):
    """Stretch the intensities between two percentiles to [0, 1] and clip (Huschauer).

    Huschauer "shrinks or expands the intensity exposure" of the radiographs: the grey levels between the
    ``lower`` and ``upper`` percentiles of the image are mapped linearly onto [0, 1] and everything outside
    is clipped, which removes the effect of a few very dark (background, collimator) or very bright
    (markers, implants) pixels on the exposure. Implemented with MONAI's
    :class:`monai.transforms.ScaleIntensityRangePercentiles` (``b_min=0, b_max=1, clip=True``).
    A constant image (both percentiles equal) comes out as zeros, with MONAI's divide-by-zero warning.

    Args:
        lower: percentile (0..100) of the image intensities that becomes 0.
        upper: percentile (0..100) that becomes 1; must be above ``lower``.
        channel_wise: compute the percentiles per channel instead of over the whole image.
    """

    backend = ScaleIntensityRangePercentiles.backend

    def __init__(self, lower: float = 1.0, upper: float = 99.0, channel_wise: bool = False) -> None:
        _check_percentiles(lower, upper)
        self.lower = float(lower)
        self.upper = float(upper)
        self.channel_wise = channel_wise

    def __call__(self, img: NdarrayOrTensor, lower: float | None = None, upper: float | None = None) -> NdarrayOrTensor:
        """Rescale ``img`` (C, H, W); ``lower``/``upper`` override the percentiles for this call only."""
        _check_chw(img, type(self).__name__)
        lower = self.lower if lower is None else float(lower)
        upper = self.upper if upper is None else float(upper)
        _check_percentiles(lower, upper)
        scaler = ScaleIntensityRangePercentiles(
            lower, upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=self.channel_wise, dtype=np.float32
        )
        return _like(scaler(img), img)


class RandIntensityRescale(RandomizableTransform):
    """:class:`IntensityRescale` with random percentiles, as augmentation (Huschauer).

    With probability ``prob`` the lower percentile is drawn uniformly from ``lower_range`` and the upper
    one from ``upper_range`` (from ``self.R``, so ``set_random_state`` and
    ``monai.utils.set_determinism`` make it reproducible); the image is then stretched between them as in
    :class:`IntensityRescale`. Otherwise the image is returned unchanged (as float32).

    Args:
        prob: probability of rescaling.
        lower_range: (min, max) of the lower percentile; 0 keeps the darkest pixel as 0.
        upper_range: (min, max) of the upper percentile; 100 keeps the brightest pixel as 1.
            Every value of ``upper_range`` must lie above every value of ``lower_range``.
        channel_wise: compute the percentiles per channel instead of over the whole image.
    """

    backend = IntensityRescale.backend

    def __init__(
        self,
        prob: float = 0.5,
        lower_range: tuple[float, float] = (0.0, 5.0),
        upper_range: tuple[float, float] = (95.0, 100.0),
        channel_wise: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        lower_range = (float(min(lower_range)), float(max(lower_range)))
        upper_range = (float(min(upper_range)), float(max(upper_range)))
        if lower_range[0] < 0.0 or upper_range[1] > 100.0 or lower_range[1] >= upper_range[0]:
            raise ValueError(
                "Percentile ranges must satisfy 0 <= lower_range <= upper_range <= 100 with no overlap, "
                f"got lower_range={lower_range}, upper_range={upper_range}."
            )
        self.lower_range = lower_range
        self.upper_range = upper_range
        self.lower = lower_range[0]
        self.upper = upper_range[1]
        self.rescaler = IntensityRescale(self.lower, self.upper, channel_wise=channel_wise)

    def randomize(self, data: None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self.lower = float(self.R.uniform(*self.lower_range))
        self.upper = float(self.R.uniform(*self.upper_range))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Rescale ``img`` (C, H, W) between freshly drawn percentiles (``randomize=False``: the last ones)."""
        _check_chw(img, type(self).__name__)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return _like(img, img)
        return self.rescaler(img, lower=self.lower, upper=self.upper)


class GBPNormalize(Transform):
    """Normalise to mean 0.5 and standard deviation 0.5: ``0.5 + 0.5 * (x - mean) / std``.

    Huschauer normalises images this way for guided back-propagation (GBP), so that every image (or
    gradient map) has the same centre and spread before it is displayed or compared. Mean and std
    (population std) are taken over the whole image, all channels together, as in the paper; the
    channels are therefore shifted and scaled by the same amounts and their relative balance is kept.
    A constant image (std 0) becomes 0.5 everywhere.

    The output is not clipped by default: about 95% of a roughly normal image falls in [0, 1] (within two
    std), and clipping would break the mean 0.5 / std 0.5 property. Pass ``clip=True`` for display.

    Args:
        clip: clip the result to [0, 1].
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, clip: bool = False) -> None:
        self.clip = clip

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalise ``img`` (C, H, W)."""
        _check_chw(img, type(self).__name__)
        arr = _to_numpy(img).astype(np.float64)
        std = float(arr.std())
        if std == 0.0 or not np.isfinite(std):
            out = np.full_like(arr, 0.5)
        else:
            out = 0.5 + 0.5 * (arr - arr.mean()) / std
        if self.clip:
            out = np.clip(out, 0.0, 1.0)
        return _like(out.astype(np.float32), img)


class ResizeWithAspectPad(InvertibleTransform):
    """Resize so that the longest side is ``spatial_size``, then pad symmetrically to a square.

    MURA radiographs have all sorts of aspect ratios (a finger is tall and thin, a shoulder nearly
    square); stretching them to the network's square input would distort the bones. This keeps the
    aspect ratio: MONAI's :class:`~monai.transforms.Resize` with ``size_mode="longest"`` followed by
    :class:`~monai.transforms.SpatialPad` (symmetric, constant ``pad_value``) to
    ``spatial_size x spatial_size``.

    MetaTensor inputs stay MetaTensors with both operations recorded in ``applied_operations``, so
    :meth:`inverse` (or a ``Compose`` inverse) maps an output, e.g. a saliency map, back to the original
    image grid. numpy in gives numpy out; a plain torch Tensor gives a plain Tensor (both without the
    record, so no inverse).

    Args:
        spatial_size: side, in pixels, of the square output (an int; 320 in the MURA baseline).
        mode: interpolation mode of ``torch.nn.functional.interpolate`` (``"area"``, ``"bilinear"``,
            ``"nearest"``, ``"bicubic"``, ...); ``"area"`` averages and so anti-aliases when shrinking.
        pad_value: intensity of the padding around the image (0 = black, like the radiograph background).
        align_corners: as in ``torch.nn.functional.interpolate``; only for linear/cubic modes.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        spatial_size: int = 320,
        mode: str = "area",
        pad_value: float = 0.0,
        align_corners: bool | None = None,
    ) -> None:
        if isinstance(spatial_size, bool) or not isinstance(spatial_size, (int, np.integer)) or spatial_size < 1:
            raise ValueError(f"spatial_size must be a positive int (side of the square output), got {spatial_size!r}.")
        self.spatial_size = int(spatial_size)
        self.mode = mode
        self.pad_value = float(pad_value)
        self.resizer = Resize(self.spatial_size, size_mode="longest", mode=mode, align_corners=align_corners)
        self.padder = SpatialPad((self.spatial_size, self.spatial_size), method="symmetric", value=self.pad_value)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Resize and pad ``img`` (C, H, W) to (C, spatial_size, spatial_size), float32."""
        _check_chw(img, type(self).__name__)
        src = convert_data_type(img, dtype=torch.float32)[0] if isinstance(img, torch.Tensor) else _to_numpy(img)
        out = self.padder(self.resizer(src))
        if isinstance(img, MetaTensor):
            return out
        return _like(out, img)

    def inverse(self, data: NdarrayOrTensor) -> NdarrayOrTensor:
        """Undo the padding and the resize of a MetaTensor produced by this transform."""
        if not isinstance(data, MetaTensor):
            raise ValueError("ResizeWithAspectPad.inverse needs the MetaTensor this transform returned.")
        return self.resizer.inverse(self.padder.inverse(data))
