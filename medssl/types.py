"""Shared keys, type aliases and small value types used across medssl.

Everything here is import-free of the heavy packages so every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

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
    UNREADABLE = "unreadable"  # a file or folder that cannot be read or listed (permissions, I/O error)
    LINK_OUTSIDE = "link_outside"  # a symbolic link to a file outside the given sources: not followed
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


class BatchKey(StrEnum):
    """The keys of the dicts that items and batches carry between data modules, transforms,
    methods and tasks (``tests/test_batch_keys.py`` keeps bare strings out of ``medssl/``).

    A StrEnum: ``batch[BatchKey.IMAGE]`` and ``batch["image"]`` are the same entry, so collate,
    torch and Lightning see plain strings. N: crops, B: batch items, S: spatial sides (crops)
    or slices per stack (joint batches).
    """

    # crops of the 3D cache (pretraining, fine-tuning)
    IMAGE = "image"  # [N, 1, *S] float32 crops of cached volumes; fine-tuning validation: a whole volume [1, 1, X, Y, Z]
    VIEWS = "views"  # list of V augmented copies of IMAGE, each [N, 1, *S] (IMAGE stays as cropped)
    BOX = "box"  # [N, 6] int64 crop box (start..., end...) in cached-volume voxels, 3D even for 2D slices
    VOLUME = "volume"  # [N] int64 index into CacheIndex.volumes (item: one int); a crop's source volume
    BODY = "body"  # [N, 3] float32 crop centre in normalised body coordinates (0..1 inside the body box)
    INDEX = "index"  # [N] int64 crop keys a data module may give: per-crop draws follow the crop, not its row
    SEED = "seed"  # int seed of the batch augmentation; popped where the augmentation runs
    WINDOW = "window"  # [M, 1, *(S + 2 margin)] float32 partner windows of anatomy pairs (refine_margin > 0), row j around crop PAIRS[j, 1]
    PAIRS = "pairs"  # [M, 2] int64 batch rows (anchor, partner) of the anatomy pairs whose partner has a WINDOW
    # joint 2D/3D batches (medssl.data.joint)
    SLICES = "slices"  # [B, S, 1, h, w] slice stacks of volumes (item: [S, 1, h, w])
    POSITIONS = "positions"  # [B, S] float32 slice positions along the slice axis, 0..1
    SLICE_KEYS = "slice_keys"  # [B] int64 key per stack, seeds the method's per-volume draws
    KEY = "key"  # int: a slice-stack item's key, collated into SLICE_KEYS by the joint dataset
    IMAGES = "images"  # [B * per_item, 1, h, w] crops of cached 2D images; unlike IMAGE never of volumes
    IMAGE_KEYS = "image_keys"  # [B * per_item] int64 key per IMAGES crop
    # fine-tuning targets (medssl.data.finetune_sets)
    LABEL = "label"  # [B, *crop] int64 segmentation classes 0..K; validation: [1, X, Y, Z]
    BOXES = "boxes"  # item: [M, 2S] float32 boxes in crop voxel edges; also the key inside TARGETS dicts
    LABELS = "labels"  # item: [M] int64 box classes; also the key inside TARGETS dicts
    TARGETS = "targets"  # detection: list of B dicts {BOXES, LABELS} (MONAI's detector input), one per crop
    TARGET = "target"  # classification: [B] int64 class index or [B, C] float32 multi-hot; unlike TARGETS no boxes
    VOLUME_ID = "volume_id"  # list of B str volume ids (fine-tuning validation)
    SPACING = "spacing"  # [B, 3] float64 voxel spacing in mm (fine-tuning validation)


class ViewSource(StrEnum):
    """Where an SSL method's views come from; each method declares one (``view_source``) and
    it is checked against the data module's ``views`` setting when training starts."""

    DATA_MODULE = "data_module"  # needs the data module's views: data.views >= 1
    OWN = "own"  # cuts its own views from each crop: data.views must be 0
    EITHER = "either"  # uses the data module's views when there are some, else makes its own


class SplitSide(StrEnum):
    """The side of a train/validation split that a label table fixes for a case (``split:``
    in docs/labels.md); a store where no case has one is split by hashing patients."""

    TRAIN = "train"
    VAL = "val"


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


# task kinds and head specs ----------------------------------------------------------------
class TaskKind(StrEnum):
    """What a fine-tuned head does; its value names the head kind in checkpoints and artifacts.

    A StrEnum: ``TaskKind("detection")`` parses the plain string a config or ``artifact.json``
    holds, and a member compares equal to (and JSON-encodes as) that string.
    """

    SEGMENTATION = "segmentation"  # a label map: one class per voxel
    DETECTION = "detection"  # boxes with a class and a score
    CLASSIFICATION = "classification"  # one diagnosis per image (single- or multi-label)

    @classmethod
    def parse(cls, value: object, where: str = "task") -> TaskKind:
        """``value`` as a member; ValueError naming ``where``, the value and the known kinds."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{where} {value!r}: expected one of {', '.join(cls)}") from None


@dataclass(frozen=True)
class HeadSpec:
    """One task head as checkpoints and artifacts record it: its kind and constructor arguments.

    ``kwargs``: the head constructor's keyword arguments as JSON primitives (the spec contract
    of ``medssl.heads.build_head`` per kind, e.g. ``num_classes``). In ``artifact.json``
    ("heads": ``{name: record}``) a head is the flat record ``{"kind": ..., **kwargs}``:
    :meth:`to_json` writes it, :meth:`from_json` reads it (and every artifact written before).
    """

    kind: TaskKind
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TaskKind.parse(self.kind, "head kind"))
        if "kind" in self.kwargs:
            raise ValueError(f"{self.kind} head arguments must not repeat 'kind': {sorted(self.kwargs)}")
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    @property
    def num_classes(self) -> int:
        """The head's ``num_classes`` argument (0 when it has none)."""
        return int(self.kwargs.get("num_classes", 0) or 0)

    def to_json(self) -> dict[str, Any]:
        """The ``artifact.json`` record: ``{"kind": "<kind>", **kwargs}``."""
        return {"kind": str(self.kind), **self.kwargs}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> HeadSpec:
        """Read a flat ``{"kind": ..., **kwargs}`` record; ValueError for an unknown kind,
        TypeError for a record that is not a JSON object."""
        if not isinstance(record, Mapping):
            raise TypeError(f"a head record must be a JSON object, got {type(record).__name__}")
        kwargs = {k: v for k, v in record.items() if k != "kind"}
        return cls(TaskKind.parse(record.get("kind"), "head kind"), kwargs)
