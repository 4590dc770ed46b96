"""Link each case of a label table to its volume and write its label map onto the volume's grid.

A case's image is scanned by ingest's own code (``ingest_work.scan_item``, ``build_stacks``)
and must yield exactly one volume; its id is computed as ingest computes it. The mask
(NIfTI, NRRD or DICOM SEG) is read into world geometry by the same readers as images, then
copied when its grid is the image's (within 1e-3 mm), placed by an integer voxel offset when
only its extent differs, else resampled by nearest neighbour in world coordinates.

Outputs: ``labels/<volume_id>.nii.gz`` (written atomically, deterministic bytes) and a
``labels`` row committed after it; a refusal is a ``rejected`` row with unit
``label:<volume_id>`` and never touches the image. A row whose keyed digest (mask bytes,
table row, image) is unchanged and whose file is in place is skipped. A label value keeps
one name across the store (:mod:`medssl.store.label_vocabulary`): a table whose structures
rename one is a ConfigError before any label is written, a case whose own names do is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl.atomic import atomic_write_bytes, remove_stale_temporaries
from medssl.deid import Pseudonymizer
from medssl.errors import ConfigError, IngestError
from medssl.io.dicom_seg import read_seg
from medssl.io.dicom_stack import build_stacks
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.io.sources import BadItem, FileFormat, SourceItem, iter_source_items, sniff_format
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.store import ingest_work as work
from medssl.store.label_table import MAX_LABEL_VALUE, LabelCase, LabelTable, check_name
from medssl.store.label_vocabulary import StructureVocabulary
from medssl.store.labels import CLASSES_META_KEY, LABELS_DIR, Box
from medssl.store.manifest import Manifest
from medssl.types import RejectReason

log = logging.getLogger("medssl.ingest")
GRID_TOL_MM = 1e-3
RESAMPLED = "label map resampled (nearest) onto the image grid"
DIGEST_VERSION = 1


@dataclass
class LabelSummary:
    written: int = 0
    skipped: int = 0
    rejected: Counter = field(default_factory=Counter)


def ingest_labels(table: LabelTable, manifest: Manifest, pseudo: Pseudonymizer, scans: dict, max_bytes: int) -> LabelSummary:
    """Every case of ``table``; ``scans`` maps ``work.item_key`` to the images' scans.

    Raises ConfigError (before writing any label) when the table's ``structures`` name a value
    otherwise than the store's labels of other volumes do.
    """
    links: dict[int, str | IngestError] = {}
    for case in table.cases:
        try:
            links[case.row] = link_case(case, pseudo, scans, max_bytes)
        except IngestError as err:
            links[case.row] = err
    mine = {vid for vid in links.values() if isinstance(vid, str)}
    vocabulary = StructureVocabulary.of_rows(manifest.labels(), skip=mine)
    vocabulary.check_table(table.structures)
    summary = LabelSummary()
    store = Path(manifest.path).parent
    (store / LABELS_DIR).mkdir(exist_ok=True)
    remove_stale_temporaries(store / LABELS_DIR)
    if table.classes is not None:
        known = json.loads(manifest.get_meta(CLASSES_META_KEY) or "[]")
        merged = known + [c for c in table.classes if c not in known]
        if merged != known:
            manifest.set_meta(CLASSES_META_KEY, json.dumps(merged))
    linked: dict[str, int] = {}
    for case in table.cases:
        ref = pseudo.token(f"{table.path}\0{case.row}", "label-source")
        unit, owner = "label:unlinked", None
        try:
            vid = links[case.row]
            if isinstance(vid, IngestError):
                raise vid
            unit = f"label:{vid}"
            if vid in linked:
                raise IngestError(RejectReason.LABEL_AMBIGUOUS, f"its image is the same volume as case {linked[vid]}'s")
            linked[vid], owner = case.row, vid
            if _label_case(case, vid, table, manifest, pseudo, max_bytes, vocabulary):
                summary.written += 1
            else:
                summary.skipped += 1
            manifest.clear_rejected_unit(unit)
            manifest.clear_rejected(ref, "label:unlinked")
        except IngestError as err:
            if owner is not None:  # this case's label is refused now: its earlier version goes
                _forget(manifest, owner)
            message = f"label table case {case.row}: {err.message}"
            if manifest.add_rejected(ref, unit, str(err.code), message, None):
                log.warning("rejected label [%s] %s", err.code, message)
            summary.rejected[str(err.code)] += 1
    return summary


def link_case(case: LabelCase, pseudo: Pseudonymizer, scans: dict, max_bytes: int) -> str:
    """The one volume id the case's image yields, computed exactly as ingest does."""
    records, files, failed = [], [], 0
    for entry in iter_source_items(case.image):
        if isinstance(entry, BadItem):
            failed += 1
            continue
        scan = scans.get(work.item_key(entry)) or work.scan_item(entry)
        if scan.error is not None:
            failed += 1
        elif scan.fmt == FileFormat.DICOM:
            records.extend(scan.records)
        else:
            files.append(work.volume_id_of_file(pseudo, scan.sha256))
    stacks, bad_groups = build_stacks(records)
    vids = [work.volume_id_of_stack(pseudo, s) for s in stacks] + files
    if len(vids) + len(bad_groups) > 1:
        raise IngestError(RejectReason.LABEL_AMBIGUOUS, f"its image yields {len(vids) + len(bad_groups)} volumes; a case needs exactly one series or file")
    if not vids:
        raise IngestError(RejectReason.LABEL_NO_IMAGE, f"its image yields no volume ({failed + len(bad_groups)} file(s) or series refused: see rejected)")
    return vids[0]


def _label_case(case: LabelCase, vid: str, table: LabelTable, manifest: Manifest, pseudo: Pseudonymizer, max_bytes: int, vocabulary: StructureVocabulary) -> bool:
    """Write (or keep) the labels of one linked case; True when something was written.

    ``vocabulary``: the names the store and the earlier cases gave; this case's names must
    agree (else LABEL_INVALID) and join it."""
    store = Path(manifest.path).parent
    volume = manifest.volume(vid)
    if volume is None or not (store / volume.path).is_file():
        raise IngestError(RejectReason.LABEL_NO_IMAGE, "its image was refused or is not in the store (see rejected)")
    mask_bytes = None if case.mask is None else SourceItem(str(case.mask)).read_bytes(max_bytes)
    mask_sha = None if mask_bytes is None else hashlib.sha256(mask_bytes).hexdigest()
    boxes = [{"label": b.label, "min": list(b.min), "max": list(b.max)} for b in case.boxes]
    facts = {"v": DIGEST_VERSION, "mask": mask_sha, "image": volume.sha256, "structures": table.structures, "classes": case.classes, "boxes": boxes}
    if case.split is not None:  # only then: a store labelled before splits existed keeps its digests
        facts["split"] = str(case.split)
    digest = pseudo.token(json.dumps(facts, sort_keys=True, default=str), "label")
    old = manifest.label(vid)
    if old is not None and old["label_digest"] == digest and _file_intact(store, old):
        vocabulary.add({int(k): v for k, v in json.loads(old["structures"] or "{}").items()}, f"case {case.row}")
        return False
    shape, affine = _image_grid(store / volume.path)
    _check_boxes(case.boxes, shape, affine)
    row = {"volume_id": vid, "mask_path": None, "mask_sha256": None, "structures": {}, "classes": list(case.classes), "boxes": boxes, "label_digest": digest, "corrections": [], "split": None if case.split is None else str(case.split)}
    if mask_bytes is not None:
        if len(shape) != 3:
            raise IngestError(RejectReason.LABEL_INVALID, f"label maps are for 3D volumes; this image is {'a 2D image' if len(shape) == 2 else f'a 4D series of {shape[3]} frames'}")
        array, names, corrections = label_map(mask_bytes, SourceItem(str(case.mask)).suffix(), shape, affine, table.structures, max_bytes)
        clash = vocabulary.clash(names, "its mask" if table.structures is None else "the table's structures")
        if clash:
            raise IngestError(RejectReason.LABEL_INVALID, clash)
        vocabulary.add(names, f"case {case.row}")
        data = nifti_gz_bytes(Volume(array, affine))
        rel = f"{LABELS_DIR}/{vid}.nii.gz"
        atomic_write_bytes(store / rel, data)
        row.update(mask_path=rel, mask_sha256=hashlib.sha256(data).hexdigest(), structures={str(k): v for k, v in names.items()}, corrections=corrections)
    else:
        _forget_file(store, old)
    manifest.add_label(row)
    return True


def label_map(data: bytes, suffix: str, shape: tuple, affine: np.ndarray, structures: dict[int, str] | None, max_bytes: int) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """Mask bytes -> (``[X, Y, Z]`` uint8/uint16 on the grid ``shape``/``affine``, names, corrections)."""
    fmt = sniff_format(data[:352], suffix)
    segments: dict[int, str] = {}
    try:
        if fmt == FileFormat.DICOM:
            seg = read_seg(data, max_bytes=max_bytes)
            mask, segments, corrections = seg.volume, seg.segments, list(seg.corrections)
        elif fmt in (FileFormat.NIFTI, FileFormat.NRRD):
            mask = (read_nifti if fmt == FileFormat.NIFTI else read_nrrd)(data, max_bytes=max_bytes)
            corrections = list(mask.corrections)
        else:
            raise IngestError(RejectReason.NOT_AN_IMAGE, "not NIfTI, NRRD or DICOM SEG")
    except IngestError as err:
        raise IngestError(RejectReason.LABEL_INVALID, f"mask unreadable [{err.code}]: {err.message}") from None
    values = _integer_values(mask.array)
    placed, how = place_on_grid(values, mask.affine, shape, affine)
    if how == "resampled":
        corrections.append(RESAMPLED)
    present = [int(v) for v in np.flatnonzero(np.bincount(placed.reshape(-1)))]
    names = _names(present, structures, segments)
    if np.any(values) and not np.any(placed):
        raise IngestError(RejectReason.LABEL_MISMATCH, "no labelled voxel of the mask falls on the image grid")
    dtype = np.uint8 if placed.max(initial=0) <= 255 else np.uint16
    return np.asfortranarray(placed.astype(dtype, copy=False)), names, corrections


def place_on_grid(values: np.ndarray, mask_affine: np.ndarray, shape: tuple, affine: np.ndarray) -> tuple[np.ndarray, str]:
    """``values`` [x, y, z] on ``mask_affine`` -> the grid ``shape``/``affine``: ("copied" | "placed" | "resampled").

    Nearest neighbour in world coordinates: image voxel centre -> mask voxel index, rounded;
    voxels outside the mask are 0. LABEL_MISMATCH when the two grids share no voxel.
    """
    shape = tuple(int(s) for s in shape)
    to_mask = np.linalg.inv(mask_affine) @ affine  # image voxel index -> mask voxel index
    if values.shape == shape and _corner_gap(mask_affine, affine, shape) <= GRID_TOL_MM:
        return values, "copied"
    lin, shift = to_mask[:3, :3], to_mask[:3, 3]
    step_mm = np.linalg.norm(mask_affine[:3, :3], axis=0)
    if np.abs((lin - np.eye(3)) * step_mm[:, None]).max() * max(shape) <= GRID_TOL_MM and np.all(np.abs(shift - np.round(shift)) * step_mm <= GRID_TOL_MM):
        out, hit = _integer_offset(values, np.round(shift).astype(int), shape)
        how = "placed"
    else:
        out, hit = _nearest(values, lin, shift, shape)
        how = "resampled"
    if not hit:
        raise IngestError(RejectReason.LABEL_MISMATCH, f"mask grid {values.shape} and image grid {shape} do not overlap in world space")
    return out, how


def _integer_offset(values: np.ndarray, offset: np.ndarray, shape: tuple) -> tuple[np.ndarray, bool]:
    out = np.zeros(shape, dtype=values.dtype)
    dst = tuple(slice(max(0, -o), min(n, m - o)) for o, n, m in zip(offset, shape, values.shape))
    if any(s.start >= s.stop for s in dst):
        return out, False
    src = tuple(slice(s.start + o, s.stop + o) for s, o in zip(dst, offset))
    out[dst] = values[src]
    return out, True


def _nearest(values: np.ndarray, lin: np.ndarray, shift: np.ndarray, shape: tuple) -> tuple[np.ndarray, bool]:
    out = np.zeros(shape, dtype=values.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = ii[..., None] * lin[:, 0] + jj[..., None] * lin[:, 1] + shift  # [X, Y, 3] at k = 0
    limit = np.asarray(values.shape)
    hit = False
    for k in range(shape[2]):  # one slice at a time keeps memory at one plane of indices
        idx = np.floor(plane + k * lin[:, 2] + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < limit), axis=-1)
        if inside.any():
            hit = True
            sel = idx[inside]
            out[:, :, k][inside] = values[sel[:, 0], sel[:, 1], sel[:, 2]]
    return out, hit


def _corner_gap(a: np.ndarray, b: np.ndarray, shape: tuple) -> float:
    """Largest world distance (mm) between the two grids' corner voxels."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return float(np.abs(corners @ (a - b).T).max())


def _integer_values(array: np.ndarray) -> np.ndarray:
    """The mask as non-negative integers in 0..65535, or LABEL_INVALID."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise IngestError(RejectReason.LABEL_INVALID, f"mask has {array.ndim} dimensions (shape {tuple(array.shape)}); a label map is 3D")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise IngestError(RejectReason.LABEL_INVALID, "mask holds non-finite values")
        if not np.array_equal(array, np.round(array)):
            raise IngestError(RejectReason.LABEL_INVALID, "mask holds non-integer values; a label map holds label values")
    elif array.dtype.kind not in "iub":
        raise IngestError(RejectReason.LABEL_INVALID, f"mask of type {array.dtype}")
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if lo < 0:
        raise IngestError(RejectReason.LABEL_INVALID, f"mask holds negative values (down to {lo:g})")
    if hi > MAX_LABEL_VALUE:
        raise IngestError(RejectReason.LABEL_INVALID, f"mask value {hi:g} above {MAX_LABEL_VALUE}")
    return array.astype(np.uint16 if hi > 255 else np.uint8, copy=False)


def _names(present: list[int], structures: dict[int, str] | None, segments: dict[int, str]) -> dict[int, str]:
    present = [v for v in present if v != 0]
    if structures is not None:
        missing = [v for v in present if v not in structures]
        if missing:
            raise IngestError(RejectReason.LABEL_INVALID, f"mask values {missing[:5]} are not in the table's structures")
        return dict(structures)
    if segments:
        try:
            return {n: check_name(name or f"segment_{n}", f"segment {n}") for n, name in sorted(segments.items())}
        except ConfigError as err:
            raise IngestError(RejectReason.LABEL_INVALID, f"SEG {err}") from None
    return {v: f"label_{v}" for v in present}


def _check_boxes(boxes: tuple[Box, ...], shape: tuple, affine: np.ndarray) -> None:
    """Every box must overlap the image's world extent (voxel edges included)."""
    edges = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, (shape[2] if len(shape) > 2 else 1) - 0.5)])
    world = edges @ affine.T
    lo, hi = world[:, :3].min(axis=0), world[:, :3].max(axis=0)
    for n, box in enumerate(boxes, start=1):
        if np.any(np.asarray(box.max) < lo) or np.any(np.asarray(box.min) > hi):
            raise IngestError(RejectReason.LABEL_MISMATCH, f"box {n} ('{box.label}') lies outside the image's world extent")


def _image_grid(path: Path) -> tuple[tuple, np.ndarray]:
    """Shape and affine of a stored volume, from its header alone (same bytes the store wrote)."""
    with gzip.open(path) as gz:
        header = nib.Nifti1Header.from_fileobj(gz)
    return tuple(int(s) for s in header.get_data_shape()), header.get_best_affine()


def _file_intact(store: Path, row: dict) -> bool:
    if row["mask_path"] is None:
        return True
    path = store / row["mask_path"]
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == row["mask_sha256"]


def _forget(manifest: Manifest, vid: str) -> None:
    """A label refused now: its earlier version no longer matches the table."""
    old = manifest.label(vid)
    if old is not None:
        manifest.delete_label(vid)
        _forget_file(Path(manifest.path).parent, old)


def _forget_file(store: Path, row: dict | None) -> None:
    if row is not None and row["mask_path"]:
        (store / row["mask_path"]).unlink(missing_ok=True)
