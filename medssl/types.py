"""Shared keys, type aliases and small value types used across medssl.

Everything here is import-free of the heavy packages so every layer may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

PathLike: TypeAlias = str | os.PathLike[str]


class SourceKind(StrEnum):
    """Where a volume came from (manifest column ``source_kind``)."""

    DICOM_FILES = "dicom_files"
    DICOM_ZIP = "dicom_zip"
    DICOMWEB = "dicomweb"
    NIFTI = "nifti"
    NRRD = "nrrd"


class RejectReason(StrEnum):
    """Reason codes of the ``rejected`` table: one per way an input can be refused."""

    NOT_AN_IMAGE = "not_an_image"  # not DICOM, NIfTI or NRRD
    MALFORMED = "malformed"  # unparseable header, strict-mode violation
    TRUNCATED = "truncated"  # file ends early, pixel data shorter than the header says
    TOO_LARGE = "too_large"  # header dimensions beyond the memory bound
    UNSUPPORTED = "unsupported"  # SOP class / transfer syntax / layout we do not convert
    NO_PIXELS = "no_pixels"  # DICOM without pixel data (SR, presentation states, ...)
    DECODE = "decode_failed"  # compressed pixel data that does not decode
    GEOMETRY = "geometry"  # missing or inconsistent position/orientation/spacing
    MISSING_SLICES = "missing_slices"  # gaps along the slice normal
    DUPLICATE_SLICES = "duplicate_slices"  # two slices at one position with different pixels
    UNEVEN_SPACING = "uneven_spacing"  # spacing varies beyond tolerance
    GANTRY_TILT = "gantry_tilt"  # sheared stack and resampling not allowed
    SHEARED = "sheared_stack"  # slice origins drift in-plane beyond DICOM rounding without a gantry that tilts
    LOCALIZER_SKIPPED = "localizer_skipped"  # a localizer/scout, skipped on request (--skip-localizers)
    BURNED_IN = "burned_in_annotation"  # pixels may carry identifiers
    BAD_ARCHIVE = "bad_archive"  # unreadable zip, unsafe member names, zip bomb
    FETCH = "fetch_failed"  # DICOMweb / network failure for one item
    INTERNAL = "internal_error"  # a bug: recorded, never fatal for the run
    # labels given with --labels (unit "label:<volume_id>"): the label is refused, never the image
    LABEL_AMBIGUOUS = "label_ambiguous"  # the case's image yields no volume or several
    LABEL_NO_IMAGE = "label_no_image"  # the case's image was refused or is not in the store
    LABEL_MISMATCH = "label_mismatch"  # mask or box does not overlap the image in world space
    LABEL_INVALID = "label_invalid"  # unreadable mask, 4D, non-integer/negative/unnamed values, bad names


class GeometryKind(StrEnum):
    """What a stored volume's affine means (manifest column ``geometry``)."""

    PATIENT = "patient"  # true world geometry (RAS mm): 3D/4D volumes
    PROJECTION = "projection"  # a 2D projection (localizer, scout, radiograph): pixel spacing only
    NONE = "none"  # a 2D image whose header gives no patient position/orientation: pixel spacing only


class IrregularPolicy(StrEnum):
    """What ingest does with gantry tilt, missing slices and uneven spacing."""

    REJECT = "reject"
    RESAMPLE = "resample"


@dataclass(frozen=True)
class OutputClass:
    """One output of a trained head, as the artifact records it (``labels`` + ``label_values``).

    ``index``: the class index the head predicts (0 = background for segmentation);
    ``value``: the label value the training masks gave this class (what ``medssl predict``
    writes into label maps; equal to ``index`` for artifacts that do not record values);
    ``name``: the structure or class name.
    """

    index: int
    value: int
    name: str
