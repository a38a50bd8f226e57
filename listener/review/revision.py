"""A reviewer's correction goes back to the PACS as the next version of the study's SR.

The PACS already holds the machine's SR; a reader there should see the corrected finding, who
gave it, and that it supersedes the earlier report. So the new SR is the same TID 1500 report with
the reviewer's finding, the reviewer as person observer and verifying observer, and the earlier
SR in its Predecessor Documents Sequence; it goes into the listener's outbox for every
destination, where the exporter sends it like any result (retries included).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from listener.config import ListenerConfig
from listener.exporter import destination_key
from listener.paths import log_ref, review_dir
from listener.store import Store, Study
from mura_monai.results import Algorithm, MemberVersion

__all__ = ["needs_revision", "write_revision"]

logger = logging.getLogger("listener.review")


def _algorithm(predecessor: pydicom.Dataset) -> Algorithm:
    """The algorithm named in the SR being revised: the correction is about that result, whatever
    model the listener runs today."""
    from mura_monai.dicom_out import read_sr_result

    named = read_sr_result(predecessor)["algorithm"]
    members = []
    for parameter in named.get("parameters", []):
        name, _, version = parameter.removeprefix("member=").partition(" ")
        members.append(MemberVersion(name, version))
    return Algorithm(name=named["name"] or str(predecessor.get("ManufacturerModelName", "mura-monai")),
                     version=named["version"] or str(predecessor.get("SoftwareVersions", "")),
                     manufacturer=str(predecessor.get("Manufacturer", "mura-monai")), members=tuple(members))


def needs_revision(study: Study, finding: str) -> bool:
    """Whether the latest SR sent for the study says something other than ``finding``."""
    if not study.sr_path or not Path(study.sr_path).is_file():
        return False
    from mura_monai.dicom_out import read_sr_result

    return read_sr_result(pydicom.dcmread(study.sr_path))["finding"] != finding


def write_revision(config: ListenerConfig, store: Store, study: Study, finding: str, reviewer: str | None) -> Path:
    """Write the corrected SR under the spool's results and queue it; returns its path.

    ``reviewer`` None: the correction came from an API client that named nobody; the SR then
    stays UNVERIFIED, names no person and says where its finding came from."""
    from mura_monai.dicom_out import build_sr

    if study.result is None or study.sr_path is None:
        raise ValueError("the study has no analysed SR to revise")
    predecessor = pydicom.dcmread(study.sr_path)
    result = study.result.with_finding(finding == "abnormal")
    analysed = {image.sop_instance_uid for image in result.images}
    sources = [pydicom.dcmread(row["path"], stop_before_pixels=True) for row in store.instances(study.key)
               if row["sop_instance_uid"] in analysed]
    sr = build_sr(result, sources, _algorithm(predecessor), predecessor=predecessor,
                  instance_number=int(predecessor.get("InstanceNumber") or 0) + 1, reviewer=reviewer,
                  finding_source=None if reviewer else "unattributed_api_client")
    folder = review_dir(config.spool_dir, study.key, int(sr.InstanceNumber))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    destinations = [destination_key(d) for d in config.destinations]
    version = store.add_revision(study.key, [path], destinations, priority=1, sr_path=path)
    logger.info("corrected SR queued", extra={"study_ref": log_ref(study.key), "version": version,
                                              "destinations": len(destinations)})
    return path
