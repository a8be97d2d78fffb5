"""What ``unetflow pacs-sync`` stores back into the study it segmented: a DICOM SEG and a volume report.

A sync is rerun after a crash, a timeout or a network error, so storing must be idempotent: the SEG
and the SR get UIDs *derived* from (source series, model name, model version) by
:func:`result_uids`, and the sync asks the PACS for those UIDs before it stores anything. The same
model on the same series always names the same results; a new model version names new ones (and
leaves the old ones alone, so a reader can compare them).

The SEG is the one ``unetflow infer`` writes (:mod:`tasks.inference.dicom_seg`), naming the model
and its version in its AlgorithmIdentificationSequence. The SR is a TID 1500 Measurement Report
(Comprehensive 3D SR): one TID 1411 volumetric measurement group per class, each referencing its
segment of the SEG and the source series, with the class volume (SCT 118565006 "Volume", UCUM ml).
Both carry the source's patient and study, so the PACS files them into the study they came from.

Anything unetflow logs or keeps about a synced series names it by :func:`result_pseudonym`, never by
patient name, patient ID or raw UIDs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from tasks.common.names import pseudonym
from tasks.inference.dicom_seg import SOFTWARE, SegIdentity, with_type2_defaults

MILLILITER = Code("ml", "UCUM", "milliliter")
SR_SERIES_OFFSET = 1001  # the SR's series number: the source's + 1001 (the SEG's is + 1000)


@dataclass(frozen=True)
class ResultUids:
    """The UIDs of the results of one model version on one source series (see :func:`result_uids`)."""

    seg_series: str
    seg_instance: str
    sr_series: str
    sr_instance: str


def _derived_uid(*parts: str) -> str:
    """A valid UID hashed from ``parts``; JSON keeps ("ab", "c") and ("a", "bc") apart (generate_uid concatenates)."""
    return str(generate_uid(entropy_srcs=[json.dumps([SOFTWARE, *parts])]))


def result_uids(source_series_uid: str, model_name: str, model_version: str) -> ResultUids:
    """Deterministic UIDs for the SEG and SR of ``model_name`` ``model_version`` on ``source_series_uid``."""
    key = (source_series_uid, model_name, model_version)
    return ResultUids(seg_series=_derived_uid("seg-series", *key), seg_instance=_derived_uid("seg-instance", *key),
                      sr_series=_derived_uid("sr-series", *key), sr_instance=_derived_uid("sr-instance", *key))


def result_pseudonym(salt: str, study_uid: str, series_uid: str) -> str:
    """How logs and local files name a synced series: the case ID ``unetflow infer`` gives it (salted hash)."""
    return pseudonym(salt, study_uid, series_uid)


def series_description(model_name: str, model_version: str, suffix: str = "") -> str:
    """``unetflow <model> v<version>[ suffix]``, cut to the 64 characters a LO value holds."""
    return f"{SOFTWARE} {model_name} v{model_version}{suffix}"[:64]


def seg_identity(model_name: str, model_version: str, uids: ResultUids) -> SegIdentity:
    """What the SEG of this result is named by: the model as its algorithm, the result's UIDs."""
    return SegIdentity(algorithm=model_name, series_uid=uids.seg_series, instance_uid=uids.seg_instance,
                       series_description=series_description(model_name, model_version))


def _series_number(source: pydicom.Dataset, offset: int) -> int:
    return int(getattr(source, "SeriesNumber", 0) or 0) + offset


def source_evidence(first_source: pydicom.Dataset, seg: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The SR's evidence without reading every source header again: ``first_source`` (whole: the SR copies its
    patient and study), then each source instance the SEG references, as the four UIDs evidence needs."""
    out = [first_source]
    for series in seg.ReferencedSeriesSequence:
        for instance in series.ReferencedInstanceSequence:
            item = pydicom.Dataset()
            item.StudyInstanceUID, item.SeriesInstanceUID = seg.StudyInstanceUID, series.SeriesInstanceUID
            item.SOPClassUID, item.SOPInstanceUID = instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID
            out.append(item)
    return out


def build_volume_report(seg: pydicom.Dataset, source_headers: Sequence[pydicom.Dataset], volumes_ml: dict[str, float],
                        model_name: str, model_version: str, uids: ResultUids) -> pydicom.Dataset:
    """A TID 1500 Measurement Report (Comprehensive 3D SR) of ``volumes_ml``, one group per SEG segment.

    ``volumes_ml`` is keyed by class name, as the SEG labels its segments; a name the SEG lacks is a
    caller's error (ValueError), as is a SEG from another study. The SR takes the patient and study
    from the first source header and lists the source slices and the SEG as its evidence.
    """
    import highdicom as hd

    source = with_type2_defaults(copy.deepcopy(source_headers[0]))  # the caller's header stays as it is
    if seg.StudyInstanceUID != source.StudyInstanceUID:
        raise ValueError("the SEG belongs to another study than the source series")
    if not volumes_ml:
        raise ValueError("a volume report needs at least one class volume")
    segments = {str(item.SegmentLabel): item for item in seg.SegmentSequence}  # labels are cut to 64 characters
    missing = sorted(label for label in volumes_ml if label[:64] not in segments)
    if missing:
        raise ValueError(f"the SEG has no segment for {missing}")
    groups = [_volume_group(seg, segments[label[:64]], volume, model_name, model_version, uids)
              for label, volume in volumes_ml.items()]
    report = hd.sr.MeasurementReport(observation_context=_observation_context(model_name, model_version),
                                     procedure_reported=_procedure(source), imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[source, *source_headers[1:], seg], content=report[0], series_instance_uid=uids.sr_series,
        series_number=_series_number(source, SR_SERIES_OFFSET), sop_instance_uid=uids.sr_instance,
        instance_number=1, manufacturer=SOFTWARE, manufacturer_model_name=model_name[:64],
        software_versions=model_version[:64] or "1", is_complete=True,
        series_description=series_description(model_name, model_version, " volumes"))


def _volume_group(seg: pydicom.Dataset, segment: pydicom.Dataset, volume_ml: float, model_name: str,
                  model_version: str, uids: ResultUids):
    """TID 1411 for one segment: its reference (SEG instance, segment number, source series) and its volume."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    number = int(segment.SegmentNumber)
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=model_version[:64] or "1")
    volume = hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume_ml), unit=MILLILITER)
    tracking = hd.sr.TrackingIdentifier(uid=_derived_uid("sr-tracking", uids.sr_instance, str(number)),
                                        identifier=str(segment.SegmentLabel))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=referenced, algorithm_id=algorithm,
        finding_type=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0]),
        finding_category=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyCategoryCodeSequence[0]),
        measurements=[volume])


def _observation_context(model_name: str, model_version: str):
    """The observer is a device: the model, identified by a UID derived from its name and version."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_derived_uid("device", model_name, model_version), name=model_name[:64], manufacturer_name=SOFTWARE,
        model_name=f"{model_name} v{model_version}"[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def _procedure(source: pydicom.Dataset) -> Code:
    """CID 100 procedure of the source modality (CT, MR; any other: "Imaging procedure")."""
    from pydicom.sr.codedict import codes

    by_modality = {"CT": codes.cid100.CTUnspecifiedBodyRegion, "MR": codes.cid100.MRIUnspecifiedBodyRegion}
    return by_modality.get(str(getattr(source, "Modality", "")), codes.cid100.ImagingProcedure)
