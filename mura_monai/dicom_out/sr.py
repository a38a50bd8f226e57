"""The study result as a TID 1500 Comprehensive SR, the form a PACS and a reading worklist can parse.

Layout: one TID 1501 measurement group for the study (finding Abnormal/Normal, finding site, the
ensemble's probability, threshold, operating point, uncertainty) and one per analysed image (its
probability, referencing the image), plus an image library listing every analysed image.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mura_monai.operating_points import OperatingPoint
from mura_monai.results import Algorithm, StudyResult

__all__ = ["build_sr", "read_sr_result", "SR_SERIES_DESCRIPTION", "BODY_PART_CODES", "FINDING_SOURCES", "OPERATING_POINTS"]

SR_SERIES_DESCRIPTION = "mura-monai AI result - NOT FOR DIAGNOSTIC USE"

# SNOMED CT finding sites; pydicom's dictionary has all but the elbow region (127949000).
BODY_PART_CODES: dict[str, hd.sr.CodedConcept] = {
    "XR_ELBOW": hd.sr.CodedConcept("127949000", "SCT", "Elbow region structure"),
    "XR_FINGER": hd.sr.CodedConcept.from_code(codes.SCT.Finger),
    "XR_FOREARM": hd.sr.CodedConcept.from_code(codes.SCT.Forearm),
    "XR_HAND": hd.sr.CodedConcept.from_code(codes.SCT.Hand),
    "XR_HUMERUS": hd.sr.CodedConcept.from_code(codes.SCT.Humerus),
    "XR_SHOULDER": hd.sr.CodedConcept.from_code(codes.SCT.Shoulder),
    "XR_WRIST": hd.sr.CodedConcept("8205005", "SCT", "Wrist region structure"),
}

# No standard concepts exist for these, so they live in a local ("99"-prefixed) coding scheme that
# the SR declares in its Coding Scheme Identification Sequence.
_LOCAL = "99MURA"
_PROB = hd.sr.CodedConcept("ABNPROB", _LOCAL, "Probability of abnormality")
_OP_POINT = hd.sr.CodedConcept("OPPOINT", _LOCAL, "Operating point")
_UNCERTAINTY = hd.sr.CodedConcept("UNCERTAINTY", _LOCAL, "Ensemble uncertainty")
_UNCERTAIN = hd.sr.CodedConcept("UNCERTAIN", _LOCAL, "Uncertain result")
_DISAGREEMENT = hd.sr.CodedConcept("DISAGREEMENT", _LOCAL, "Ensemble member disagreement")
_THRESHOLD = hd.sr.CodedConcept.from_code(codes.DCM.ThresholdValue)
_FINDING_SOURCE = hd.sr.CodedConcept("FINDSRC", _LOCAL, "Source of the finding")
FINDING_SOURCES = {"unattributed_api_client": hd.sr.CodedConcept("APICLIENT", _LOCAL, "Unattributed API client")}
OPERATING_POINTS = {point.value: point.dicom_meaning for point in OperatingPoint}
_ABNORMAL = hd.sr.CodedConcept.from_code(codes.SCT.Abnormal)
_NORMAL = hd.sr.CodedConcept.from_code(codes.SCT.Normal)
_YES, _NO = hd.sr.CodedConcept.from_code(codes.SCT.Yes), hd.sr.CodedConcept.from_code(codes.SCT.No)
_SIDES = {"L": codes.SCT.Left, "R": codes.SCT.Right, "B": codes.SCT.RightAndLeft}
_PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "Probability")
_NO_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "Pixels")
_ACQ = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
_SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")  # what highdicom names library entries
_STUDY_GROUP = "Study result"
# Type 2 attributes highdicom's SR constructor reads without a default.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime")


def build_sr(study: StudyResult | Mapping, sources: Sequence[Dataset], algorithm: Algorithm | Mapping, *,
             series_number: int = 900,
             instance_number: int = 1, predecessor: Dataset | None = None,
             series_instance_uid: str | None = None, reviewer: str | None = None,
             reviewer_organization: str = "mura-monai review",
             finding_source: str | None = None) -> hd.sr.ComprehensiveSR:
    """A new version of an existing result stays in the predecessor's series unless told otherwise,
    so the PACS shows one AI series per study.

    ``reviewer``: the person whose finding ``study.abnormal`` is (a corrected result). They
    become the document's person observer beside the device and its verifying observer
    (VERIFIED); the probabilities and the operating point stay the algorithm's.

    ``finding_source``: a key of :data:`FINDING_SOURCES` when the finding is neither the
    algorithm's nor a named person's (a correction from an API client that named nobody). The
    study group then says so, and the document stays UNVERIFIED: no person vouched for it."""
    study, algorithm = StudyResult.coerce(study), Algorithm.coerce(algorithm)
    if finding_source is not None and finding_source not in FINDING_SOURCES:
        raise ValueError(f"finding_source must be one of {sorted(FINDING_SOURCES)}, got {finding_source!r}")
    if not sources:
        raise ValueError("an SR needs at least one analysed source image")
    study_uid = sources[0].StudyInstanceUID
    if any(ds.StudyInstanceUID != study_uid for ds in sources) or study.study != study_uid:
        raise ValueError("the result and all its source images must belong to one study")
    headers = [_header(ds) for ds in sources]
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    algo = _algorithm_id(algorithm)
    sites = _finding_sites(study, headers)
    groups = [_study_group(study, algo, sites, algorithm, finding_source)]
    for i, image in enumerate(study.images, 1):
        uid = image.sop_instance_uid
        if uid not in by_uid:
            raise ValueError(f"image {i} of the result ({uid}) is not among the source datasets")
        groups.append(_image_group(i, image, by_uid[uid], algo, sites, algorithm))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(algorithm), name=algorithm.name, manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.version))
    person = None if reviewer is None else hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=reviewer, organization_name=reviewer_organization))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person, observer_device_context=observer),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=groups,
    )
    _insert_image_library(report, headers)
    if series_instance_uid is None:
        series_instance_uid = predecessor.SeriesInstanceUID if predecessor is not None else generate_uid()
    return hd.sr.ComprehensiveSR(
        evidence=headers,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_verified=reviewer is not None,
        verifying_observer_name=reviewer,
        verifying_organization=reviewer_organization if reviewer is not None else None,
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=[_equipment(algorithm)],
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=_LOCAL, name="mura-monai local codes", responsible_organization=algorithm.manufacturer)],
    )


def _header(ds: Dataset) -> Dataset:
    """Header-only copy: highdicom must not decode pixels, and sources from real modalities often
    lack Type 2 attributes that highdicom reads unconditionally (the caller's datasets stay as
    they were)."""
    header = Dataset()
    for elem in ds:
        if elem.tag.group < 0x7FE0:
            header.add(elem)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _device_uid(algorithm: Algorithm) -> str:
    """Stable per algorithm version, so observers can be matched across reports."""
    return generate_uid(entropy_srcs=["mura-monai device", algorithm.name, algorithm.version])


def _algorithm_id(algorithm: Algorithm, member: str | None = None) -> hd.sr.AlgorithmIdentification:
    if member is not None:
        version = {m.name: m.version for m in algorithm.members}.get(member, "unknown")
        return hd.sr.AlgorithmIdentification(name=member, version=version)
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=algorithm.manufacturer,
        parameters=[f"member={m.name} {m.version}" for m in algorithm.members] or None)


def _equipment(algorithm: Algorithm) -> hd.ContributingEquipment:
    members = [f"{m.name} {m.version}" for m in algorithm.members]
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=[f"{algorithm.name} {algorithm.version}", *members],
        contribution_datetime=datetime.now(),
        contribution_description="AI abnormality scoring - NOT FOR DIAGNOSTIC USE")


def _finding_sites(study: StudyResult, headers: Sequence[Dataset]) -> list[hd.sr.FindingSite] | None:
    """Laterality only when every image agrees, as a mixed study has no single side."""
    site = BODY_PART_CODES.get(study.body_part)
    if site is None:
        return None
    sides = {str(ds.get("ImageLaterality") or ds.get("Laterality") or "").strip().upper() for ds in headers}
    side = _SIDES.get(sides.pop()) if len(sides) == 1 else None  # "U" and "" have no code
    return [hd.sr.FindingSite(anatomic_location=site, laterality=side)]


def _probabilities(probability: float, members: Mapping[str, float], algorithm: Algorithm, image: Dataset | None):
    """Members get their own TID 4019 so a reviewer sees which network said what."""
    refs = [hd.sr.SourceImageForMeasurement.from_source_image(image)] if image is not None else None
    out = [hd.sr.Measurement(name=_PROB, value=float(probability), unit=_PROBABILITY_UNIT, referenced_images=refs)]
    for name, p in (members or {}).items():
        out.append(hd.sr.Measurement(name=_PROB, value=float(p), unit=_PROBABILITY_UNIT,
                                     algorithm_id=_algorithm_id(algorithm, name), referenced_images=refs))
    return out


def _study_group(study, algo, sites, algorithm, finding_source=None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    op = study.operating_point
    if op is None:
        raise ValueError("an SR needs the operating point its threshold was chosen at")
    if len(op) > 16:
        raise ValueError(f"operating point name {op!r} is longer than a DICOM code value allows")
    measurements = _probabilities(study.probability, study.members, algorithm, None)
    measurements.append(hd.sr.Measurement(name=_THRESHOLD, value=study.threshold,
                                          unit=_PROBABILITY_UNIT))
    for concept, value in ((_UNCERTAINTY, study.uncertainty), (_DISAGREEMENT, study.disagreement)):
        if value is not None:
            measurements.append(hd.sr.Measurement(name=concept, value=float(value), unit=_NO_UNIT))
    evaluations = [
        hd.sr.QualitativeEvaluation(_OP_POINT, hd.sr.CodedConcept(op, _LOCAL, OPERATING_POINTS.get(op, op))),
        hd.sr.QualitativeEvaluation(_UNCERTAIN, _YES if study.uncertain else _NO),
    ]
    if finding_source is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(_FINDING_SOURCE, FINDING_SOURCES[finding_source]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=_STUDY_GROUP),
        finding_type=_ABNORMAL if study.abnormal else _NORMAL,
        finding_sites=sites, algorithm_id=algo, measurements=measurements, qualitative_evaluations=evaluations)


def _image_group(i, image, ds, algo, sites, algorithm) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"Image {i}"),
        finding_sites=sites, algorithm_id=algo,
        measurements=_probabilities(image.probability, image.members, algorithm, ds),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)])


def _insert_image_library(report: hd.sr.MeasurementReport, headers: Sequence[Dataset]) -> None:
    """highdicom's own ImageLibrary reads PatientOrientation and ImagerPixelSpacing of every CR/DX
    image unconditionally and raises on radiographs without them (common for CR), so the TID 1600
    library is built here with those descriptors only where the image has them."""
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary,
                                         relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    for modality in dict.fromkeys(ds.Modality for ds in headers):
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
            name=codes.DCM.Modality, value=_modality_code(modality), relationship_type=_ACQ)])
        for ds in (d for d in headers if d.Modality == modality):
            entry = hd.sr.ImageContentItem(name=_SOURCE, referenced_sop_class_uid=ds.SOPClassUID,
                                           referenced_sop_instance_uid=ds.SOPInstanceUID,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            entry.ContentSequence = hd.sr.ContentSequence(_image_descriptors(ds))
            group.ContentSequence.append(entry)
        library.ContentSequence.append(group)
    root = report[0].ContentSequence
    position = next(i for i, item in enumerate(root) if item.name == codes.DCM.ImagingMeasurements)
    root.insert(position, library)  # TID 1500 puts the library before the measurements


def _modality_code(modality: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(modality, "DCM", {"CR": "Computed Radiography", "DX": "Digital Radiography"}
                              .get(modality, modality))


def _image_descriptors(ds: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1602/1603 descriptors; spacing only when stated and non-zero (some CR write 0\\0)."""
    items: list[hd.sr.ContentItem] = [hd.sr.NumContentItem(name=codes.DCM.PixelDataRows, value=ds.Rows, unit=_PIXELS,
                                                           relationship_type=_ACQ),
             hd.sr.NumContentItem(name=codes.DCM.PixelDataColumns, value=ds.Columns, unit=_PIXELS,
                                  relationship_type=_ACQ)]
    orientation = ds.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2 and all(orientation):
        items += [hd.sr.TextContentItem(name=codes.DCM.PatientOrientationRow, value=orientation[0],
                                        relationship_type=_ACQ),
                  hd.sr.TextContentItem(name=codes.DCM.PatientOrientationColumn, value=orientation[1],
                                        relationship_type=_ACQ)]
    spacing = ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(s) > 0 for s in spacing):
        items += [hd.sr.NumContentItem(name=codes.DCM.HorizontalPixelSpacing, value=float(spacing[1]),
                                       unit=codes.UCUM.Millimeter, relationship_type=_ACQ),
                  hd.sr.NumContentItem(name=codes.DCM.VerticalPixelSpacing, value=float(spacing[0]),
                                       unit=codes.UCUM.Millimeter, relationship_type=_ACQ)]
    return items


def read_sr_result(ds: Dataset) -> dict:
    """Reads what :func:`build_sr` wrote, through highdicom's TID 1500 accessors, so the review app
    and the tests check the SR a PACS would see rather than our input dict."""
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    groups = report.get_image_measurement_groups()  # type: ignore[attr-defined]  # a MeasurementReport
    study = next(g for g in groups if g.tracking_identifier == _STUDY_GROUP)
    ensemble, members = _read_probabilities(study)
    sites = study.finding_sites
    site = sites[0].value if sites else None
    side = sites[0].laterality if sites else None
    images, image_members = {}, {}
    for group in groups:
        if group is study:
            continue
        uid = group.source_images[0].referenced_sop_instance_uid
        images[uid], image_members[uid] = _read_probabilities(group)
    library = hd.sr.utils.find_content_items(ds, name=codes.DCM.ImageLibrary)
    referenced = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in hd.sr.utils.find_content_items(library[0], value_type="IMAGE", recursive=True)]
    texts = _texts(study[0])
    return {
        "study": ds.StudyInstanceUID,
        "finding": "abnormal" if study.finding_type == _ABNORMAL else "normal",
        "abnormal": study.finding_type == _ABNORMAL,
        "probability": ensemble,
        "members": members,
        "threshold": study.get_measurements(name=_THRESHOLD)[0].value,
        "operating_point": _evaluation(study, _OP_POINT).value,
        "uncertain": _evaluation(study, _UNCERTAIN) == _YES,
        "uncertainty": _optional_value(study, _UNCERTAINTY),
        "disagreement": _optional_value(study, _DISAGREEMENT),
        "body_part": next((k for k, c in BODY_PART_CODES.items() if c == site), "UNKNOWN"),
        "laterality": next((k for k, c in _SIDES.items() if side is not None and c == side), None),
        "images": images,
        "image_members": image_members,
        "referenced_sop_instance_uids": referenced,
        "algorithm": {"name": texts.get("111001", [None])[0], "version": texts.get("111003", [None])[0],
                      "parameters": texts.get("111002", [])},
        "reviewer": (str(ds.VerifyingObserverSequence[0].VerifyingObserverName)
                     if ds.get("VerificationFlag") == "VERIFIED" and ds.get("VerifyingObserverSequence") else None),
        "finding_source": _finding_source(study),
        "predecessors": [ref.ReferencedSOPInstanceUID for study_ in ds.get("PredecessorDocumentsSequence", [])
                         for series in study_.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence],
    }


def _texts(item: Dataset) -> dict[str, list[str]]:
    """TEXT children by concept code (TID 4019 algorithm name 111001, version 111003, params 111002)."""
    out: dict[str, list[str]] = {}
    if "ContentSequence" not in item:
        return out
    for child in hd.sr.utils.find_content_items(item, value_type="TEXT"):
        out.setdefault(child.ConceptNameCodeSequence[0].CodeValue, []).append(child.TextValue)
    return out


def _read_probabilities(group) -> tuple[float | None, dict[str, float]]:
    """The ensemble's probability carries no algorithm of its own; a member's names its network."""
    ensemble, members = None, {}
    for m in group.get_measurements(name=_PROB):
        name = _texts(m[0]).get("111001")
        if name:
            members[name[0]] = m.value
        else:
            ensemble = m.value
    return ensemble, members


def _finding_source(group) -> str | None:
    found = group.get_qualitative_evaluations(name=_FINDING_SOURCE)
    return next((k for k, c in FINDING_SOURCES.items() if found and found[0].value == c), None)


def _evaluation(group, name):
    return group.get_qualitative_evaluations(name=name)[0].value


def _optional_value(group, name) -> float | None:
    found = group.get_measurements(name=name)
    return found[0].value if found else None
