"""DICOM SR measurement report (TID 1500) of 3D detections on a source series (highdicom).

One volumetric ROI measurement group (TID 1411) per detection. Its region is an
``ELLIPSOID`` SCOORD3D inscribed in the detection box: six points, the ends of its three
axes, which are the box's face centres, so the box is recoverable exactly (min and max of
the points per axis). Coordinates are in DICOM patient space (LPS, mm) of the source
series' frame of reference: ``x_LPS = -x_RAS``, ``y_LPS = -y_RAS``, ``z_LPS = z_RAS``.

Measurements per group: ``Diameter`` (mm, the longest box edge), ``Volume`` (mm3, of the
ellipsoid ROI, ``pi / 6 * a * b * c`` for box edges a, b, c) and ``Probability`` (DCM
122157, unitless, the detector's score). The finding type names the label with a private
coding scheme ("99MEDSSL") unless the caller maps it to a standard code.

Like the SEG, the SR is a derived object for the hospital's own PACS: it carries the
source's patient and study identity on an explicit allow-list (medssl/io/pacs_attributes.py);
see docs/identifiers.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medssl.atomic import atomic_writer
from medssl.io.pacs_attributes import SR_ATTRIBUTES, keep_allowed
from medssl.io.seg_writer import MEDSSL_MANUFACTURER

__all__ = ["PRIVATE_SCHEME", "box_to_lps", "write_dicom_sr"]

PRIVATE_SCHEME = "99MEDSSL"
_UNITLESS = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
_REQUIRED_KEYS = ("label", "score", "box_min_ras_mm", "box_max_ras_mm")


def box_to_lps(box_min_ras_mm: Sequence[float], box_max_ras_mm: Sequence[float]) -> np.ndarray:
    """``[2, 3]`` (min, max) corners in LPS mm of an axis-aligned RAS box (negate x and y)."""
    lo, hi = np.asarray(box_min_ras_mm, dtype=float), np.asarray(box_max_ras_mm, dtype=float)
    if lo.shape != (3,) or hi.shape != (3,):
        raise ValueError(f"box corners must be 3 numbers each, got {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("box corners must be finite numbers")
    if np.any(hi <= lo):
        raise ValueError(
            f"box_max_ras_mm must exceed box_min_ras_mm on every axis, got "
            f"{lo.tolist()} .. {hi.tolist()}"
        )
    flip = np.array([-1.0, -1.0, 1.0])
    corners = np.stack([lo * flip, hi * flip])
    return np.stack([corners.min(axis=0), corners.max(axis=0)])


def write_dicom_sr(
    detections: Sequence[Mapping],
    source_datasets: Sequence[Dataset],
    out_path: str | Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    finding_codes: Mapping[str, hd.sr.CodedConcept] | None = None,
    series_number: int = 902,
) -> Path:
    """Write a Comprehensive 3D SR measurement report of ``detections``; returns the path.

    detections: each ``{"label": str, "score": float in [0, 1], "box_min_ras_mm": (x, y, z),
    "box_max_ras_mm": (x, y, z)}`` in the RAS world (mm) of the source series; at least one
    (TID 1500 needs a measurement group: send no SR when nothing was found).
    source_datasets: the source series' images (any order; they are the report's evidence
    and give its frame of reference). finding_codes: label -> coded concept for the finding
    type (default: the label in the "99MEDSSL" scheme).

    Raises ValueError naming the detection and the reason (missing key, bad box or score),
    or when there are no detections, or the sources are empty, span several series or lack
    a FrameOfReferenceUID.
    """
    sources = list(source_datasets)
    if not sources:
        raise ValueError("source_datasets is empty: an SR needs its source images as evidence")
    series = {str(ds.SeriesInstanceUID) for ds in sources}
    if len(series) != 1:
        raise ValueError(f"source_datasets span {len(series)} series; give one series")
    if not detections:
        raise ValueError("detections is empty: a TID 1500 report needs at least one group")
    frame_of_reference = sources[0].get("FrameOfReferenceUID")
    if not frame_of_reference:
        raise ValueError("source dataset 0 has no FrameOfReferenceUID: 3D coordinates need one")
    groups = [
        _group(index, detection, sources[0], algorithm_name, algorithm_version, finding_codes or {})
        for index, detection in enumerate(detections)
    ]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(),
        name=algorithm_name[:64],
        manufacturer_name=MEDSSL_MANUFACTURER,
        model_name=algorithm_version[:64],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MEDSSL_MANUFACTURER,
        series_description=f"{MEDSSL_MANUFACTURER} SR {algorithm_name}"[:64],
        is_complete=True,
    )
    keep_allowed(sr, SR_ATTRIBUTES)  # highdicom copies more than the PACS needs
    out_path = Path(out_path)
    with atomic_writer(out_path) as stream:
        sr.save_as(stream, enforce_file_format=True)
    return out_path


def _group(
    index: int,
    detection: Mapping,
    source: Dataset,
    algorithm_name: str,
    algorithm_version: str,
    finding_codes: Mapping[str, hd.sr.CodedConcept],
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    missing = [key for key in _REQUIRED_KEYS if key not in detection]
    if missing:
        raise ValueError(f"detection {index} lacks {missing}")
    label = str(detection["label"])
    try:
        score = float(detection["score"])
        lo, hi = box_to_lps(detection["box_min_ras_mm"], detection["box_max_ras_mm"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"detection {index}: {err}") from None
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"detection {index}: score must be in [0, 1], got {score}")
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    axes = [
        centre + sign * half[axis] * np.eye(3)[axis]
        for axis in np.argsort(-half)
        for sign in (-1.0, 1.0)
    ]  # major axis first
    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
        graphic_data=np.array(axes),
        frame_of_reference_uid=str(source.FrameOfReferenceUID),
        source_series=hd.sr.SourceSeriesForSegmentation(str(source.SeriesInstanceUID)),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    edges = hi - lo
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Diameter,
            value=float(edges.max()),
            unit=codes.UCUM.Millimeter,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=math.pi / 6 * float(np.prod(edges)),
            unit=codes.UCUM.CubicMillimeter,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.DCM.Probability, value=score, unit=_UNITLESS, algorithm_id=algorithm
        ),
    ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"detection {index + 1}"
        ),
        referenced_volume_surface=surface,
        finding_type=finding_codes.get(label) or _private_code(label),
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _private_code(label: str) -> hd.sr.CodedConcept:
    """The label as a code of medssl's private scheme (CodeValue is an SH: 16 characters)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:16] or "finding"
    return hd.sr.CodedConcept(
        value=value, scheme_designator=PRIVATE_SCHEME, meaning=label[:64] or "finding"
    )
