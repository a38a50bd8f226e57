"""An image uploaded through MONAI Label's ``PUT /datastore/`` joins the listener's queue.

It is stored exactly as the DICOM SCP stores a received instance (durably, under a hashed name)
and recorded in the same table, so the listener's assembly and worker analyse it like any study
a modality sent; the review app itself never analyses.
"""
from __future__ import annotations

import io

import pydicom
from pydicom.errors import InvalidDicomError

from listener.config import ListenerConfig
from listener.review.datastore import ReviewDatastore, image_id, study_id
from listener.spool import Spool

__all__ = ["UPLOAD_AE", "store_upload"]

UPLOAD_AE = "REVIEW_UPLOAD"  # the "calling AE" of uploaded studies, as the status command shows it


def store_upload(config: ListenerConfig, data: ReviewDatastore, content: bytes) -> tuple[str, str]:
    """``(study id, image id)`` of the stored file; ValueError if it is no usable DICOM image."""
    try:
        ds = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"not a DICOM file ({type(exc).__name__}); upload a DICOM radiograph") from None
    missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        raise ValueError(f"DICOM file without {', '.join(missing)}")
    spool = Spool(config.spool_dir, clean=False)  # the listener owns tmp/: never clean it from here
    path = spool.write_durably([content], spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
    key = data.store.record_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, UPLOAD_AE, ds.SOPClassUID, path)
    return study_id(key), image_id(ds.SOPInstanceUID)
