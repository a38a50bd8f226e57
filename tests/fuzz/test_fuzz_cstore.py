"""The C-STORE SCP on mutated real radiographs, through one real association: every instance gets
a documented status, the service keeps serving, each success is in the spool byte for byte, in the
queue and readable as what its header says, nothing half-written is left, and no log line the SCP
writes carries the patient's name, ID or the instance's UIDs."""
from __future__ import annotations

import io
import logging
import math
import time

import pydicom
import pytest
from hypothesis import given, reject
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import JPEGLSLossless, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from listener.logs import JsonFormatter
from listener.scp import RADIOGRAPH_SOP_CLASSES, STATUS, TRANSFER_SYNTAXES, StorageSCP
from listener.spool import Spool
from listener.store import Store
from tests.fuzz.strategies import SECRETS, fuzz_settings, meta_end, mutated, report
from tests.listener.support import load


class _ScpLog(logging.Handler):
    """The lines the SCP's threads write, formatted as the service writes them (extras included);
    lines from the test's own thread (pydicom warning while the strategies write files) are not
    the service's."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != "MainThread":
            self.lines.append(self.format(record))


class Served:
    """One SCP and one association for the whole module; a new association only when one ends."""

    def __init__(self, folder) -> None:
        config = load(folder / "svc")
        self.store = Store(config.spool_dir / "queue.sqlite3")
        self.spool = Spool(config.spool_dir)
        self.server = StorageSCP(config, self.store, self.spool)
        self.server.start()
        self.ae = AE(ae_title="FUZZER")
        self.ae.add_requested_context(Verification)
        for sop_class in RADIOGRAPH_SOP_CLASSES:  # one context per syntax: the SCP accepts one per context
            for syntax in TRANSFER_SYNTAXES:
                self.ae.add_requested_context(sop_class, syntax)
        self.assoc = None
        self.folder = folder

    def association(self):
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.server.port, ae_title="MURA_AI")
            assert self.assoc.is_established
        return self.assoc

    def send(self, data: bytes):
        """The C-STORE response to ``data`` sent as its bytes are; None when the sender itself
        cannot send it (file meta unreadable, no accepted context for the syntax it names)."""
        path = self.folder / "fuzzed.dcm"
        path.write_bytes(data)
        try:
            _ = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta.MediaStorageSOPInstanceUID
        except Exception:
            return None
        try:
            return self.association().send_c_store(path)
        except ValueError:  # "No presentation context for ..." is the sender's own refusal
            return None

    def recorded(self, sop_uid: str) -> str | None:
        row = self.store._db().execute("SELECT path FROM instances WHERE sop_instance_uid=?", (sop_uid,)).fetchone()
        return None if row is None else row[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send each file's bytes as they are, undecoded
    log = _ScpLog()
    root, netdicom = logging.getLogger(), logging.getLogger("pynetdicom")
    levels = root.level, netdicom.level
    root.addHandler(log)
    root.setLevel(logging.INFO)
    netdicom.setLevel(logging.WARNING)  # as listener.logs.setup_logging leaves it
    served = Served(tmp_path_factory.mktemp("cstore"))
    served.log = log
    yield served
    if served.assoc is not None and served.assoc.is_established:
        served.assoc.release()
    served.server.stop()
    root.removeHandler(log)
    root.setLevel(levels[0])
    netdicom.setLevel(levels[1])
    _config.STORE_SEND_CHUNKED_DATASET = chunked


def _forbidden(seeds: list[bytes]) -> tuple[str, ...]:
    """What no log line may hold: the patient's name and ID, the seeds' UIDs, a mutation's UID."""
    uids = set()
    for seed in seeds:
        ds = pydicom.dcmread(io.BytesIO(seed), stop_before_pixels=True)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return (*SECRETS, *uids, "not a uid")


def _inconsistency(kept: bytes) -> str:
    """Why the worker could never read an acknowledged instance's pixels, or '' (the header read
    as the standard says, independently of how the SCP checks it)."""
    ds = pydicom.dcmread(io.BytesIO(kept))
    pixels = ds.get_item("PixelData")
    if pixels is None or not pixels.value:
        return "no pixel data"
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return "" if bytes(pixels.value[:4]) == b"\xfe\xff\x00\xe0" else "compressed syntax, pixels not encapsulated"
    factors = [int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)),
               int(ds.get("NumberOfFrames", 1) or 1), math.ceil(int(ds.BitsAllocated) / 8)]
    if min(factors) < 1:
        return f"Rows, Columns, samples, frames, bytes {factors}"
    return "pixel data short" if len(pixels.value) < math.prod(factors) else ""


def test_cstore_survives_mutated_radiographs(served, radiograph_seeds):
    statuses: list[int] = []
    unsent = []
    forbidden = _forbidden(radiograph_seeds)
    start = min(meta_end(seed) for seed in radiograph_seeds)

    @fuzz_settings(200)
    @given(data=mutated(radiograph_seeds, start=start))
    def run(data):
        logged = len(served.log.lines)
        status = served.send(data)
        if status is None:
            unsent.append(1)
            reject()
        assert "Status" in status, "no C-STORE response: the SCP aborted the association"
        statuses.append(int(status.Status))
        assert int(status.Status) in STATUS.values(), hex(int(status.Status))
        assert not list(served.spool.tmp.iterdir()), "a half-written instance left in the spool"
        for line in served.log.lines[logged:]:
            assert not any(value in line for value in forbidden), line
        if int(status.Status) == 0:
            sop_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                          specific_tags=[]).file_meta.MediaStorageSOPInstanceUID)
            path = served.recorded(sop_uid)
            assert path is not None, "acknowledged but not recorded"
            kept = open(path, "rb").read()
            assert kept[meta_end(kept):] == data[meta_end(data):], "acknowledged but not kept as sent"
            assert _inconsistency(kept) == "", _inconsistency(kept)

    started = time.monotonic()
    run()
    report("cstore", {"executions": len(statuses), "not_sendable": len(unsent),
                      **{f"0x{s:04X}": statuses.count(s) for s in sorted(set(statuses))},
                      "seconds": round(time.monotonic() - started)})
    # both accepted and refused inputs were seen
    assert statuses.count(0) > 0 and len(set(statuses)) > 1, statuses
    # the service still answers and stores a valid instance
    assoc = served.association()
    assert assoc.send_c_echo().Status == 0
    assert served.send(radiograph_seeds[0]).Status == 0


def _edit(seed: bytes, **attributes) -> bytes:
    """``seed`` as a new instance (its own SOP Instance UID), with ``attributes`` set."""
    ds = pydicom.dcmread(io.BytesIO(seed))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _announcing(seed: bytes, syntax) -> bytes:
    """A new instance of ``seed`` whose file meta names ``syntax``, its data set unchanged."""
    seed = _edit(seed)
    ds = pydicom.dcmread(io.BytesIO(seed), stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = syntax
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta)
    return seed[:128] + b"DICM" + meta.getvalue() + seed[meta_end(seed):]


# what the fuzzing found acknowledged with 0x0000 although the worker could never read it
_INCONSISTENT = {
    "negative NumberOfFrames": lambda seed: _edit(seed, NumberOfFrames="-1"),
    "Rows 0": lambda seed: _edit(seed, Rows=0),
    "SamplesPerPixel 0": lambda seed: _edit(seed, SamplesPerPixel=0),
    "BitsAllocated 0": lambda seed: _edit(seed, BitsAllocated=0),
    "empty Pixel Data": lambda seed: _edit(seed, PixelData=b""),
    "JPEG-LS announced over native pixels": lambda seed: _announcing(seed, JPEGLSLossless),
}


@pytest.mark.parametrize("case", sorted(_INCONSISTENT))
def test_inconsistent_pixel_data_is_refused_and_not_stored(served, radiograph_seeds, case):
    data = _INCONSISTENT[case](radiograph_seeds[0])
    sop_uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    assert served.send(data).Status == STATUS["does_not_match"]
    assert served.recorded(sop_uid) is None


def test_a_malformed_uid_is_not_logged(served, radiograph_seeds):
    """Found by the structured mutations: reading the Study Instance UID converted it, and
    pydicom's validation logged "Invalid value for VR UI: 'not a uid'" from the SCP's thread; a
    UID is read as stored now (the instance is still taken: the UID is the modality's to choose)."""
    logged = len(served.log.lines)
    assert served.send(_edit(radiograph_seeds[0], StudyInstanceUID="not a uid")).Status == 0
    assert not [line for line in served.log.lines[logged:] if "not a uid" in line]
