"""The C-STORE SCP on mutated real radiographs, through one real association: every instance gets
a documented status, the service keeps serving, each success is in the spool byte for byte and
in the queue, and no log line carries the patient's name."""
from __future__ import annotations

import io
import logging

import pydicom
import pytest
from hypothesis import given, reject
from pydicom.filereader import read_preamble, _read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from listener.scp import RADIOGRAPH_SOP_CLASSES, STATUS, TRANSFER_SYNTAXES, StorageSCP
from listener.spool import Spool
from listener.store import Store
from tests.fuzz.strategies import SECRET, fuzz_settings, mutated
from tests.listener.support import load


def _meta_end(data: bytes) -> int:
    """Where the data set starts: the sender parses the file meta itself, so mutations keep it."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return fp.tell()


@pytest.fixture
def served(tmp_path):
    config = load(tmp_path / "svc")
    store = Store(config.spool_dir / "queue.sqlite3")
    server = StorageSCP(config, store, Spool(config.spool_dir))
    server.start()
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send each file's bytes as they are, undecoded
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(Verification)
    for sop_class in RADIOGRAPH_SOP_CLASSES:  # one context per syntax: the SCP accepts one syntax per context
        for syntax in TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    yield server, store, ae
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    server.stop()


def _associate(ae, server):
    assoc = ae.associate("127.0.0.1", server.port, ae_title="MURA_AI")
    assert assoc.is_established
    return assoc


def test_cstore_survives_mutated_radiographs(served, radiograph_seeds, tmp_path, caplog):
    server, store, ae = served
    state = {"assoc": _associate(ae, server), "sent": 0}
    statuses: list[int] = []
    documented = set(STATUS.values())
    start = min(_meta_end(seed) for seed in radiograph_seeds)
    caplog.set_level(logging.INFO, logger="listener")

    @fuzz_settings(120)
    @given(data=mutated(radiograph_seeds, start=start))
    def run(data):
        path = tmp_path / "fuzzed.dcm"
        path.write_bytes(data)
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
            sop_uid = str(meta.MediaStorageSOPInstanceUID)
        except Exception:
            reject()  # the sender itself cannot read the file meta: nothing goes on the wire
        if not state["assoc"].is_established:  # the SCP may abort an association on garbage
            state["assoc"] = _associate(ae, server)
        status = state["assoc"].send_c_store(path)
        if "Status" not in status:
            state["assoc"].abort()
            state["assoc"] = _associate(ae, server)  # an aborted association is allowed; a dead service is not
            return
        statuses.append(int(status.Status))
        assert int(status.Status) in documented, hex(int(status.Status))
        if int(status.Status) == 0:
            stored = {i["sop_instance_uid"]: i for s in store.studies() for i in store.instances(s.key)}
            assert sop_uid in stored, "acknowledged but not recorded"
            kept = open(stored[sop_uid]["path"], "rb").read()
            assert kept[_meta_end(kept):] == data[_meta_end(data):], "acknowledged but not kept as sent"

    run()
    state["assoc"].release()
    assert statuses.count(0) > 0 and len(set(statuses)) > 1  # both accepted and refused inputs were seen
    # the service still answers and stores a valid instance
    assoc = _associate(ae, server)
    assert assoc.send_c_echo().Status == 0
    (tmp_path / "valid.dcm").write_bytes(radiograph_seeds[0])
    assert assoc.send_c_store(tmp_path / "valid.dcm").Status == 0
    assoc.release()
    assert SECRET.split("^")[1] not in caplog.text
