"""The C-STORE SCP: accept radiographs from a modality or PACS, keep them safe, then say success.

What is stored is what was received (file meta + the encoded data set, pixel data untouched):
decoding belongs to the worker, and a re-encoded copy would not be the instance the modality
sent. The order is the promise the service makes: write to a temp file, fsync, rename into the
spool, record in the store, and only then answer 0x0000. A handler never raises; every failure
gets the status that says why and one log line without patient data.

Accepted: Verification, and the plain-radiograph storage classes an MSK study arrives in
(CR; DX for presentation and for processing), in every transfer syntax the project's reader
decodes. Mammography and intra-oral DX are refused at association: not musculoskeletal.
"""
from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from typing import Any

from pydicom.encaps import parse_basic_offsets
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from listener.config import ListenerConfig
from listener.database import DATABASE_ERRORS
from listener.metrics import Metrics
from listener.spool import Spool
from listener.store import Store
from mura_monai.constants import RADIOGRAPH_SOP_CLASSES

__all__ = ["RADIOGRAPH_SOP_CLASSES", "STATUS", "TRANSFER_SYNTAXES", "StorageSCP"]

logger = logging.getLogger("listener.scp")

TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
)
VERIFICATION = "1.2.840.10008.1.1"
STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,   # disk below the configured reserve, or the spool not writable
    "does_not_match": 0xA900,     # pixel data inconsistent with the header or syntax, no pixel data
    "cannot_understand": 0xC000,  # unparsable data set, missing UIDs
}


class _Reject(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _check_pixels(ds, transfer_syntax) -> None:
    """Pixel data must be there and be what the header and transfer syntax say; checked, not
    decoded (decoding is the worker's), so that nothing the worker can never read is acknowledged.

    Uncompressed: at least Rows x Columns x samples x frames x bytes, each factor positive (a zero
    or negative one made any length, even none, pass). Compressed: encapsulated, starting with the
    Basic Offset Table item; a file meta that names a compressed syntax over native pixels is not.
    """
    pixels = ds.get_item("PixelData")
    if pixels is None or not pixels.value:
        raise _Reject("does_not_match", "no pixel data")
    if transfer_syntax.is_encapsulated:
        try:
            parse_basic_offsets(pixels.value)
        except ValueError:
            raise _Reject("does_not_match", f"pixel data not encapsulated as {transfer_syntax.name} requires") from None
        return
    try:
        factors = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)),
                   int(ds.get("NumberOfFrames", 1) or 1), math.ceil(int(ds.BitsAllocated) / 8))
    except (AttributeError, TypeError, ValueError):
        raise _Reject("does_not_match", "image pixel module incomplete") from None
    if min(factors) < 1:
        raise _Reject("does_not_match", "Rows, Columns, SamplesPerPixel, NumberOfFrames or BitsAllocated not positive")
    expected = math.prod(factors)
    if len(pixels.value) < expected:
        raise _Reject("does_not_match", f"pixel data holds {len(pixels.value)} bytes, header says {expected}")


def _uid(ds, keyword: str) -> str:
    """The UID as stored, not converted: pydicom's validation of a malformed one logs a warning
    quoting it (or whatever a lying length made it swallow), and UIDs stay out of the log."""
    element = ds.get_item(keyword)
    if element is None:
        raise _Reject("cannot_understand", f"no {keyword}")
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii", "replace").strip("\x00 ")
    return "" if value is None else str(value).strip()


class StorageSCP:
    """pynetdicom AE serving C-ECHO and C-STORE per ``[listener]``; ``start()`` returns once listening."""

    def __init__(self, config: ListenerConfig, store: Store, spool: Spool,
                 on_stored: Callable[[str], None] | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.spool = spool
        self.on_stored = on_stored
        self.server: ThreadedAssociationServer | None = None
        settings = config.listener
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.require_calling_aet = list(settings.allowed_calling_aets)
        ae.add_supported_context(VERIFICATION)
        for sop_class in RADIOGRAPH_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self.ae = ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.config.listener
        if not settings.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.config.resolve(settings.tls_cert), self.config.resolve(settings.tls_key))
        if settings.tls_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.config.resolve(settings.tls_ca))
        return context

    def start(self) -> None:
        settings = self.config.listener
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_ACCEPTED, self._log_association, ["accepted"]),
            (evt.EVT_REJECTED, self._log_association, ["rejected"]),
        ]
        self.server = self.ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers,
                                           ssl_context=self._ssl_context())

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the SCP is not listening: call start() first")
        return int(self.server.server_address[1])

    @staticmethod
    def _log_association(event, outcome: str) -> None:
        logger.info(f"association {outcome}", extra={"calling_ae": event.assoc.requestor.ae_title,
                                                     "peer": event.assoc.requestor.address})

    def _handle_store(self, event) -> int:
        status = self._handle_store_counted(event)
        if self.metrics is not None:
            self.metrics.instances_received.labels("stored" if status == STATUS["success"] else "refused").inc()
        return status

    def _handle_store_counted(self, event) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            path = self._store(event, calling_ae)
        except _Reject as exc:
            logger.warning("instance refused", extra={"calling_ae": calling_ae, "sop_class": sop_class,
                                                      "status": f"0x{STATUS[exc.status]:04X}", "reason": exc.reason})
            return STATUS[exc.status]
        except OSError as exc:
            logger.error("instance not stored", extra={"calling_ae": calling_ae, "sop_class": sop_class,
                                                       "status": "0xA700", "reason": type(exc).__name__})
            return STATUS["out_of_resources"]
        except DATABASE_ERRORS as exc:  # the database away (a restart): a transient refusal the sender retries
            logger.error("instance not recorded: the database is unavailable", extra={
                "calling_ae": calling_ae, "sop_class": sop_class, "status": "0xA700", "reason": type(exc).__name__})
            return STATUS["out_of_resources"]
        except Exception as exc:  # never raise into pynetdicom: say "cannot understand" and go on
            logger.warning("instance refused", extra={"calling_ae": calling_ae, "sop_class": sop_class,
                                                      "status": "0xC000", "reason": type(exc).__name__})
            return STATUS["cannot_understand"]
        if self.on_stored is not None:
            self.on_stored(str(path))
        return STATUS["success"]

    def _store(self, event, calling_ae: str):
        if self.spool.free_mb() < self.config.listener.min_free_disk_mb:
            raise _Reject("out_of_resources", "free disk below the configured reserve")
        try:
            ds = event.dataset
            study_uid, sop_uid = _uid(ds, "StudyInstanceUID"), _uid(ds, "SOPInstanceUID")
        except _Reject:
            raise
        except Exception as exc:
            raise _Reject("cannot_understand", f"data set not parsable or without UIDs ({type(exc).__name__})") from None
        if not study_uid or not sop_uid:
            raise _Reject("cannot_understand", "StudyInstanceUID or SOPInstanceUID empty")
        if sop_uid != str(event.request.AffectedSOPInstanceUID):
            raise _Reject("does_not_match", "SOPInstanceUID differs from the C-STORE request's")
        _check_pixels(ds, UID(event.context.transfer_syntax))
        final = self.spool.instance_path(study_uid, sop_uid)
        self.spool.write_durably([event.encoded_dataset()], final)  # preamble, file meta, the data set as sent
        self.store.record_instance(sop_uid, study_uid, calling_ae, str(event.request.AffectedSOPClassUID), final)
        return final
