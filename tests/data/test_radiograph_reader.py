"""Tests for mura_monai.data.radiograph_reader: real CR files from pydicom-data, synthetic
datasets written with pydicom, PNG/JPEG, and the MONAI loaders."""

from __future__ import annotations

import math
import pathlib
import pickle

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mura_monai.data.radiograph_reader import (
    DICOM_META_KEYS,
    LoadRadiograph,
    LoadRadiographD,
    LoadRadiographd,
    LoadRadiographDict,
    RadiographReader,
    RadiographReadError,
    is_dicom,
    read_radiograph,
)

PATIENT_NAME = "Doe^Janet"
PATIENT_ID = "PID-98765"
BASE_KEYS = {"path", "format", "original_shape", *DICOM_META_KEYS}


def _pydicom_data() -> pathlib.Path:
    data_store = pytest.importorskip("data_store")
    return pathlib.Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="module")
def real():
    """Read each real file once: name -> (image, meta, raw dataset)."""
    folder = _pydicom_data()
    out = {}
    for name in ("RG1_UNCR", "RG1_J2KR", "RG1_UNCI", "RG1_J2KI", "RG3_UNCR", "RG3_J2KR"):
        path = folder / f"{name}.dcm"
        if not path.exists():
            pytest.skip(f"pydicom-data lacks {path.name}")
        image, meta = read_radiograph(path)
        out[name] = (image, meta, pydicom.dcmread(path))
    return out


def make_dataset(
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs,
) -> Dataset:
    """A minimal CR (or, with colour, secondary capture) dataset holding ``arr``."""
    arr = np.ascontiguousarray(arr)
    colour = arr.ndim == 3
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = SecondaryCaptureImageStorage if colour else ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT" if colour else "CR"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.BodyPartExamined = "HAND"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write(ds: Dataset, path: pathlib.Path) -> pathlib.Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def read_ds(ds: Dataset, tmp_path: pathlib.Path, name: str = "x.dcm"):
    return read_radiograph(write(ds, tmp_path / name))


def ramp(rows=24, cols=32, lo=0, hi=4095, dtype=np.uint16) -> np.ndarray:
    return np.linspace(lo, hi, rows * cols).reshape(rows, cols).round().astype(dtype)


def assert_unit(image: np.ndarray, shape) -> None:
    assert image.dtype == np.float32
    assert image.shape == tuple(shape)
    assert image.flags.c_contiguous
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0


# ----------------------------------------------------------------------------------------
# real radiographs (pydicom-data)


def test_real_files_shape_range_and_meta(real):
    for name, (image, meta, ds) in real.items():
        assert_unit(image, (ds.Rows, ds.Columns))
        assert set(meta) == BASE_KEYS, name
        assert meta["format"] == "dicom"
        assert meta["original_shape"] == (ds.Rows, ds.Columns)
        assert meta["Modality"] == "CR"
        assert meta["PhotometricInterpretation"] == "MONOCHROME1"
        assert meta["SOPInstanceUID"] == ds.SOPInstanceUID
        assert meta["TransferSyntaxUID"] == ds.file_meta.TransferSyntaxUID
        for key in DICOM_META_KEYS:
            if key != "PixelSpacing":
                assert isinstance(meta[key], str), (name, key)
    assert real["RG3_UNCR"][1]["BodyPartExamined"] == "EXTREMITY"
    assert real["RG3_UNCR"][1]["ViewPosition"] == "AP"
    # RG1 carries PixelSpacing 0\0: not a spacing
    assert real["RG1_UNCR"][1]["PixelSpacing"] is None


def test_lossless_jpeg2000_reads_identical_to_uncompressed(real):
    for base in ("RG1", "RG3"):
        np.testing.assert_array_equal(real[f"{base}_J2KR"][0], real[f"{base}_UNCR"][0])


def test_lossy_jpeg2000_close_to_original(real):
    # UNCI is the decompressed lossy image: the same pixels; the original (UNCR) is close
    np.testing.assert_allclose(real["RG1_J2KI"][0], real["RG1_UNCI"][0], atol=1e-6)
    diff = np.abs(real["RG1_J2KI"][0] - real["RG1_UNCR"][0]).mean()
    assert 0 < diff < 0.02


def test_monochrome1_is_inverted(real):
    image, _, ds = real["RG3_UNCR"]
    raw = ds.pixel_array.astype(np.float64)
    corr = np.corrcoef(image[::4, ::4].ravel(), raw[::4, ::4].ravel())[0, 1]
    assert corr < -0.9


# ----------------------------------------------------------------------------------------
# synthetic grayscale DICOM: modality LUT, VOI, photometric interpretation


def _linear(x, c, w):
    """PS3.3 C.11.2.1.2.1 (LINEAR), scaled to [0, 1]."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5


def test_rescale_then_window_hand_computed(tmp_path):
    stored = np.array([[0, 400, 500], [550, 600, 1000]], dtype=np.uint16)
    ds = make_dataset(stored, bits_stored=12, RescaleSlope="2", RescaleIntercept="-100",
                      WindowCenter="1000", WindowWidth="500")
    image, meta = read_ds(ds, tmp_path)
    assert_unit(image, (2, 3))
    modality = stored * 2.0 - 100  # -100 700 900 / 1000 1100 1900
    expected = np.vectorize(lambda x: _linear(x, 1000, 500))(modality)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 0] == 0.0 and image[1, 2] == 1.0
    assert image[0, 2] == pytest.approx((900 - 999.5) / 499 + 0.5, abs=1e-6)
    assert meta["PixelSpacing"] is None and meta["PatientSex"] == ""


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function(tmp_path, function):
    stored = np.array([[100, 900, 1000, 1100, 2000]], dtype=np.uint16)
    ds = make_dataset(stored, bits_stored=12, WindowCenter="1000", WindowWidth="400", VOILUTFunction=function)
    image, _ = read_ds(ds, tmp_path)
    x = stored.astype(np.float64)
    if function == "LINEAR_EXACT":
        expected = np.clip((x - 1000) / 400 + 0.5, 0, 1)
    else:
        expected = 1 / (1 + np.exp(-4 * (x - 1000) / 400))
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_first_of_several_windows(tmp_path):
    stored = ramp()
    one = make_dataset(stored, bits_stored=12, WindowCenter="1500", WindowWidth="1000")
    several = make_dataset(stored, bits_stored=12, WindowCenter=["1500", "3000"], WindowWidth=["1000", "200"])
    a, _ = read_ds(one, tmp_path, "a.dcm")
    b, _ = read_ds(several, tmp_path, "b.dcm")
    np.testing.assert_array_equal(a, b)


def test_voi_lut_sequence_preferred_over_window(tmp_path):
    stored = np.array([[0, 10, 100], [200, 255, 4000]], dtype=np.uint16)
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [256, 0, 12]))  # LUT Descriptor: 256 entries from 0, 12 bits
    item.add(DataElement(0x00283006, "US", [(255 - i) * 16 for i in range(256)]))  # an inverting LUT
    ds = make_dataset(stored, bits_stored=12, WindowCenter="2000", WindowWidth="4000")
    ds.VOILUTSequence = DicomSequence([item])
    image, _ = read_ds(ds, tmp_path)
    # LUT output spans 0..4080: scaled by its own range; inputs past the last entry take it
    expected = np.array([[255, 245, 155], [55, 0, 0]]) / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_unusable_window_falls_back(tmp_path):
    ds = make_dataset(ramp(), bits_stored=12, WindowCenter="1000", WindowWidth="0")
    image, _ = read_ds(ds, tmp_path)
    assert image.min() == 0.0 and image.max() == 1.0


def test_monochrome1_is_inverse_of_monochrome2(tmp_path):
    stored = ramp()
    kwargs = dict(bits_stored=12, WindowCenter="2000", WindowWidth="3000")
    mono2, _ = read_ds(make_dataset(stored, "MONOCHROME2", **kwargs), tmp_path, "m2.dcm")
    mono1, meta = read_ds(make_dataset(stored, "MONOCHROME1", **kwargs), tmp_path, "m1.dcm")
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert meta["PhotometricInterpretation"] == "MONOCHROME1"
    # and without a window too
    m2, _ = read_ds(make_dataset(stored, "MONOCHROME2", bits_stored=12), tmp_path, "n2.dcm")
    m1, _ = read_ds(make_dataset(stored, "MONOCHROME1", bits_stored=12), tmp_path, "n1.dcm")
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_8bit_unsigned(tmp_path):
    stored = ramp(lo=30, hi=200, dtype=np.uint8)
    # no VOI: 8-bit data are display-ready, read like a PNG (/255)
    image, _ = read_ds(make_dataset(stored), tmp_path, "plain.dcm")
    assert_unit(image, stored.shape)
    np.testing.assert_allclose(image, stored / 255.0, atol=1e-6)
    # with a window, the window rules
    windowed, _ = read_ds(make_dataset(stored, WindowCenter="128", WindowWidth="64"), tmp_path, "win.dcm")
    expected = np.vectorize(lambda x: _linear(x, 128, 64))(stored.astype(np.float64))
    np.testing.assert_allclose(windowed, expected, atol=1e-6)


def test_signed_16bit(tmp_path):
    stored = ramp(lo=-1000, hi=1000, dtype=np.int16)
    windowed, _ = read_ds(make_dataset(stored, WindowCenter="0", WindowWidth="1001"), tmp_path, "w.dcm")
    expected = np.vectorize(lambda x: _linear(x, 0, 1001))(stored.astype(np.float64))
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    plain, _ = read_ds(make_dataset(stored), tmp_path, "p.dcm")
    assert_unit(plain, stored.shape)
    assert plain.min() == 0.0 and plain.max() == 1.0
    assert np.all(np.diff(plain.ravel()) >= 0)  # monotonic in the stored value


def test_no_window_spans_unit_range_robustly(tmp_path):
    stored = ramp(lo=1000, hi=3000)
    stored[0, 0] = 65535  # a hot pixel does not squash the contrast
    image, _ = read_ds(make_dataset(stored), tmp_path)
    assert image.min() == 0.0 and image.max() == 1.0
    centre = image[stored.shape[0] // 2, stored.shape[1] // 2]
    assert 0.4 < centre < 0.6


def test_constant_image_is_zero(tmp_path):
    image, _ = read_ds(make_dataset(np.full((8, 8), 700, np.uint16)), tmp_path)
    assert_unit(image, (8, 8))
    assert not image.any()


def test_modality_lut_sequence(tmp_path):
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [4, 0, 16]))
    item.add(DataElement(0x00283006, "US", [0, 100, 200, 400]))
    item.ModalityLUTType = "US"
    ds = make_dataset(stored, bits_stored=12, WindowCenter="200.5", WindowWidth="401")
    ds.ModalityLUTSequence = DicomSequence([item])
    image, _ = read_ds(ds, tmp_path)
    expected = [_linear(x, 200.5, 401) for x in (0, 100, 200, 400)]
    np.testing.assert_allclose(image[0], expected, atol=1e-6)


# ----------------------------------------------------------------------------------------
# compressed transfer syntaxes written here read like the uncompressed original


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_lossless_compressed_synthetic(tmp_path, syntax):
    rng = np.random.default_rng(0)
    stored = (ramp(40, 56) + rng.integers(0, 50, (40, 56))).clip(0, 4095).astype(np.uint16)
    reference, _ = read_ds(make_dataset(stored, bits_stored=12), tmp_path, "ref.dcm")
    ds = make_dataset(stored, bits_stored=12)
    ds.compress(syntax)
    image, meta = read_ds(ds, tmp_path, "c.dcm")
    assert meta["TransferSyntaxUID"] == syntax
    np.testing.assert_array_equal(image, reference)


def test_jpeg_baseline_monochrome_and_colour(tmp_path):
    gray = ramp(48, 64, 20, 230, np.uint8)
    ok, frame = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    ds = make_dataset(gray)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame.tobytes()])
    image, meta = read_ds(ds, tmp_path, "g.dcm")
    assert_unit(image, gray.shape)
    assert meta["TransferSyntaxUID"] == JPEGBaseline8Bit
    assert np.abs(image - gray / 255.0).mean() < 0.01

    rgb = np.dstack([gray, np.flipud(gray), np.full_like(gray, 90)])
    ok, frame = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    ds = make_dataset(rgb, "YBR_FULL_422")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame.tobytes()])
    image, _ = read_ds(ds, tmp_path, "c.dcm")
    luma = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255.0
    assert_unit(image, gray.shape)
    assert np.abs(image - luma).mean() < 0.02


# ----------------------------------------------------------------------------------------
# colour and palette DICOM


def test_rgb_secondary_capture_to_grayscale(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[0, 3] = (255, 255, 255)
    rgb[1] = (100, 100, 100)
    image, meta = read_ds(make_dataset(rgb, "RGB", Modality="OT"), tmp_path)
    assert_unit(image, (4, 6))
    np.testing.assert_allclose(image[0, :4], [0.299, 0.587, 0.114, 1.0], atol=1e-6)
    np.testing.assert_allclose(image[1], 100 / 255.0, atol=1e-6)
    assert meta["PhotometricInterpretation"] == "RGB"


def test_palette_colour(tmp_path):
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    ds = make_dataset(stored, "PALETTE COLOR")
    for colour, values in (("Red", [0, 65535, 0, 32768]), ("Green", [0, 0, 65535, 32768]), ("Blue", [0, 0, 0, 32768])):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(values, "<u2").tobytes())
    image, _ = read_ds(ds, tmp_path)
    np.testing.assert_allclose(image[0], [0, 0.299, 0.587, 32768 / 65535], atol=1e-5)


# ----------------------------------------------------------------------------------------
# errors


def _assert_clean_error(excinfo, path) -> None:
    message = str(excinfo.value)
    assert str(path) in message
    assert isinstance(excinfo.value, ValueError)
    for secret in ("Doe", "Janet", PATIENT_ID):
        assert secret not in message


def test_error_no_pixel_data(tmp_path):
    ds = make_dataset(ramp())
    del ds.PixelData
    path = write(ds, tmp_path / "nopixels.dcm")
    with pytest.raises(RadiographReadError, match="no PixelData") as excinfo:
        read_radiograph(path)
    _assert_clean_error(excinfo, path)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_error_truncated_file(tmp_path, keep):
    path = write(make_dataset(ramp(64, 64)), tmp_path / "whole.dcm")
    data = path.read_bytes()
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(RadiographReadError) as excinfo:
        read_radiograph(cut)
    _assert_clean_error(excinfo, cut)


def test_error_rows_columns_do_not_match(tmp_path):
    ds = make_dataset(ramp(512, 512))
    ds.Rows = 600
    path = write(ds, tmp_path / "bad.dcm")
    with pytest.raises(RadiographReadError, match="600×512 do not match pixel data length") as excinfo:
        read_radiograph(path)
    _assert_clean_error(excinfo, path)
    ds.Rows = 256  # half the data would be silently dropped
    write(ds, path)
    with pytest.raises(RadiographReadError, match="do not match pixel data length"):
        read_radiograph(path)


def test_error_corrupt_compressed_data(tmp_path):
    ds = make_dataset(ramp(32, 32))
    ds.compress(JPEG2000Lossless)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])
    path = write(ds, tmp_path / "j2k.dcm")
    with pytest.raises(RadiographReadError,
                       match=r"cannot decode pixel data \(transfer syntax 1.2.840.10008.1.2.4.90\)") as excinfo:
        read_radiograph(path)
    _assert_clean_error(excinfo, path)


def test_error_multiframe(tmp_path):
    frames = np.stack([ramp(), ramp()])
    ds = make_dataset(frames[0], NumberOfFrames=2)
    ds.PixelData = frames.tobytes()
    path = write(ds, tmp_path / "multi.dcm")
    with pytest.raises(RadiographReadError, match="NumberOfFrames 2") as excinfo:
        read_radiograph(path)
    _assert_clean_error(excinfo, path)


@pytest.mark.parametrize("name", ["garbage.dcm", "garbage", "garbage.png"])
def test_error_garbage(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    assert not is_dicom(path)
    with pytest.raises(RadiographReadError) as excinfo:
        read_radiograph(path)
    _assert_clean_error(excinfo, path)


def test_error_missing_and_empty(tmp_path):
    with pytest.raises(RadiographReadError, match="no such file"):
        read_radiograph(tmp_path / "absent.dcm")
    with pytest.raises(RadiographReadError, match="not a regular file"):
        read_radiograph(tmp_path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(RadiographReadError):
        read_radiograph(empty)
    corrupt_png = tmp_path / "bad.png"
    corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(RadiographReadError, match="cannot decode PNG"):
        read_radiograph(corrupt_png)


def test_error_pickles():
    err = RadiographReadError("/spool/x.dcm", "not an image: no PixelData")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == "/spool/x.dcm" and back.reason == err.reason
    assert str(RadiographReadError("a message")) == "a message"  # torch's worker re-raise


# ----------------------------------------------------------------------------------------
# is_dicom and files without a suffix


def test_is_dicom_and_suffixless_files(tmp_path, real):
    folder = _pydicom_data()
    assert is_dicom(folder / "RG3_UNCR.dcm")
    stored = ramp()
    ds = make_dataset(stored, bits_stored=12)
    reference, _ = read_ds(ds, tmp_path, "ref.dcm")

    no_suffix = write(make_dataset(stored, bits_stored=12), tmp_path / "1.2.3.4")
    assert is_dicom(no_suffix)
    np.testing.assert_array_equal(read_radiograph(no_suffix)[0], reference)

    # a bare dataset: no preamble, no file meta (implicit VR little endian)
    bare = make_dataset(stored, bits_stored=12)
    del bare.file_meta
    bare_path = tmp_path / "bare"
    pydicom.dcmwrite(bare_path, bare, implicit_vr=True, little_endian=True)
    assert bare_path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(bare_path)
    image, meta = read_radiograph(bare_path)
    np.testing.assert_array_equal(image, reference)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2"

    png = tmp_path / "img.png"
    cv2.imwrite(str(png), np.zeros((4, 4), np.uint8))
    assert not is_dicom(png)
    assert not is_dicom(tmp_path / "absent")
    assert not is_dicom(tmp_path)


# ----------------------------------------------------------------------------------------
# PNG / JPEG


def test_png_grayscale_8bit_non_square(tmp_path):
    gray = ramp(30, 50, 0, 255, np.uint8)
    path = tmp_path / "image1.png"
    cv2.imwrite(str(path), gray)
    image, meta = read_radiograph(path)
    assert_unit(image, (30, 50))
    np.testing.assert_allclose(image, gray / 255.0, atol=1e-7)
    assert set(meta) == BASE_KEYS
    assert meta["format"] == "png" and meta["original_shape"] == (30, 50)
    assert meta["PixelSpacing"] is None and meta["StudyInstanceUID"] == ""


def test_png_rgb_8bit(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (255, 0, 0)
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    image, _ = read_radiograph(path)
    assert_unit(image, (5, 7))
    assert image[1, 1] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert image[0, 0] == pytest.approx(0.299, abs=1e-6)
    # MURA's RGB PNGs hold three equal channels: same as the grayscale value
    same = np.dstack([ramp(5, 7, 0, 255, np.uint8)] * 3)
    cv2.imwrite(str(path), same)
    np.testing.assert_allclose(read_radiograph(path)[0], same[..., 0] / 255.0, atol=1e-6)


def test_png_16bit(tmp_path):
    gray = ramp(12, 9, 0, 65535, np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), gray)
    image, _ = read_radiograph(path)
    assert_unit(image, (12, 9))
    np.testing.assert_allclose(image, gray / 65535.0, atol=1e-7)


def test_jpeg_and_suffixless_png(tmp_path):
    gray = ramp(40, 24, 0, 255, np.uint8)
    jpg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    image, meta = read_radiograph(jpg)
    assert meta["format"] == "jpeg"
    assert_unit(image, (40, 24))
    assert np.abs(image - gray / 255.0).mean() < 0.01
    bare = tmp_path / "noext"
    cv2.imwrite(str(tmp_path / "tmp.png"), gray)
    bare.write_bytes((tmp_path / "tmp.png").read_bytes())
    image, meta = read_radiograph(bare)
    assert meta["format"] == "png"
    np.testing.assert_allclose(image, gray / 255.0, atol=1e-7)


# ----------------------------------------------------------------------------------------
# MONAI


def test_loadradiographd_dicom_metatensor(tmp_path):
    from monai.data import MetaTensor

    stored = ramp(20, 36)
    ds = make_dataset(stored, bits_stored=12, PixelSpacing=["0.15", "0.2"], ViewPosition="PA", ImageLaterality="L")
    path = write(ds, tmp_path / "a.dcm")
    expected, _ = read_radiograph(path)
    out = LoadRadiographd(keys="image")({"image": str(path), "label": 1})
    image = out["image"]
    assert isinstance(image, MetaTensor)
    assert tuple(image.shape) == (1, 20, 36)  # rows first, not transposed
    assert image.dtype.is_floating_point and str(image.dtype) == "torch.float32"
    np.testing.assert_array_equal(image.numpy()[0], expected)
    meta = image.meta
    assert BASE_KEYS <= set(meta)
    assert meta["SOPInstanceUID"] == ds.SOPInstanceUID
    assert meta["Laterality"] == "L" and meta["ViewPosition"] == "PA"
    np.testing.assert_allclose(np.asarray(meta["PixelSpacing"]), [0.15, 0.2])
    assert tuple(np.asarray(meta["spatial_shape"])) == (20, 36)
    assert meta["filename_or_obj"] == str(path)
    assert out["label"] == 1
    assert LoadRadiographD is LoadRadiographd and LoadRadiographDict is LoadRadiographd


def test_loadradiograph_png_and_errors(tmp_path):
    gray = ramp(30, 50, 0, 255, np.uint8)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), gray)
    image = LoadRadiograph()(path)
    assert tuple(image.shape) == (1, 30, 50)
    np.testing.assert_allclose(image.numpy()[0], gray / 255.0, atol=1e-7)
    assert np.isnan(np.asarray(image.meta["PixelSpacing"])).all()
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nonsense" * 40)
    with pytest.raises(RadiographReadError):
        LoadRadiograph()(bad)


def test_monai_dataset_dataloader_and_transforms(tmp_path):
    from monai.data import DataLoader
    from monai.data import Dataset as MonaiDataset
    from monai.transforms import Compose, Resized, ScaleIntensityd

    gray = ramp(30, 50, 0, 255, np.uint8)
    png = tmp_path / "p.png"
    cv2.imwrite(str(png), gray)
    dcm = write(make_dataset(ramp(30, 50), bits_stored=12, PixelSpacing=["0.1", "0.1"]), tmp_path / "d.dcm")
    items = [{"image": str(dcm)}, {"image": str(png)}]
    transform = Compose([LoadRadiographd(keys="image"), Resized(keys="image", spatial_size=(16, 24)),
                         ScaleIntensityd(keys="image")])
    loader = DataLoader(MonaiDataset(items, transform), batch_size=1, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert tuple(batch["image"].shape) == (1, 1, 16, 24)
        assert "StudyInstanceUID" in batch["image"].meta
    # mixed DICOM and PNG collate together
    both = next(iter(DataLoader(MonaiDataset(items, transform), batch_size=2, num_workers=0)))
    assert tuple(both["image"].shape) == (2, 1, 16, 24)
    assert list(both["image"].meta["format"]) == ["dicom", "png"]


def test_bundle_style_config(tmp_path):
    from monai.bundle import ConfigParser

    path = write(make_dataset(ramp(10, 14), bits_stored=12), tmp_path / "c.dcm")
    parser = ConfigParser({"load": {"_target_": "mura_monai.data.radiograph_reader.LoadRadiographd", "keys": "image"}})
    out = parser.get_parsed_content("load")({"image": str(path)})
    assert tuple(out["image"].shape) == (1, 10, 14)


def test_reader_verify_suffix_and_stacking(tmp_path):
    reader = RadiographReader()
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((4, 6), np.uint8))
    dcm_no_suffix = write(make_dataset(ramp(4, 6)), tmp_path / "instance")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert reader.verify_suffix(str(png)) and reader.verify_suffix("x.dcm") and reader.verify_suffix("x.JPG")
    assert reader.verify_suffix(str(dcm_no_suffix))
    assert not reader.verify_suffix(str(other)) and not reader.verify_suffix("x.nii.gz")
    array, meta = reader.get_data(reader.read([str(png), str(dcm_no_suffix)]))
    assert array.shape == (2, 4, 6) and meta["original_channel_dim"] == 0
    array, meta = reader.get_data(reader.read(str(png)))
    assert array.shape == (4, 6) and math.isnan(meta["original_channel_dim"])
    np.testing.assert_array_equal(meta["affine"], np.eye(3))


def test_loaders_use_only_the_radiograph_reader(tmp_path):
    loader = LoadRadiograph()
    assert len(loader.readers) == 1 and isinstance(loader.readers[0], RadiographReader)
    by_name = LoadRadiograph(reader="mura_monai.data.radiograph_reader.RadiographReader")
    assert isinstance(by_name.radiograph_reader, RadiographReader)
    path = write(make_dataset(ramp(6, 10), bits_stored=12), tmp_path / "m.dcm")
    out = LoadRadiographd(keys="image", image_only=False)({"image": path})
    assert tuple(out["image"].shape) == (1, 6, 10)
    assert out["image_meta_dict"]["format"] == "dicom"
    with pytest.raises(RadiographReadError):
        LoadRadiographd(keys="image")({"image": tmp_path / "absent.dcm"})


def test_loaders_set_every_attribute_monais_constructors_set():
    """LoadRadiograph(d) set LoadImage(d)'s attributes themselves (not to construct MONAI's default
    readers): a MONAI release that adds one must fail here, not in the middle of a training run."""
    import warnings

    from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available
    from monai.transforms import LoadImage, LoadImaged

    if is_nvimgcodec_available():
        pytest.skip("constructing MONAI's default readers would register nvImageCodec with pydicom for the session")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NvImgCodecPydicomReader's, at construction
        monai_loader = LoadImage(reader=RadiographReader(), ensure_channel_first=True)
        monai_dict_loader = LoadImaged(keys="image", reader=RadiographReader(), ensure_channel_first=True)
    assert set(vars(monai_loader)) <= set(vars(LoadRadiograph()))
    assert set(vars(monai_dict_loader)) <= set(vars(LoadRadiographd(keys="image")))
