"""Builders shared by the label tests: small phantoms, their masks, tables and SEG objects."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from medssl.store.ingest import IngestOptions, IngestSummary, ingest
from tests.store import store_view as sv
from tools.phantom import Phantom, make_ct_phantom, make_slice_grid, sample_on_grid

KEY = bytes(range(32))
SHAPE, SPACING = (32, 32, 16), (5.0, 5.0, 8.0)


def phantom(seed: int = 1, n_lesions: int = 1) -> Phantom:
    return make_ct_phantom(SHAPE, SPACING, seed=seed, n_lesions=n_lesions, noise_sd=2.0)


def structures_of(ph: Phantom) -> dict[int, str]:
    return {v: n for v, n in ph.label_names.items() if v}


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = b"CANARY^IN^HEADER"  # must not be carried into the store
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def write_table(path: Path, cases: list[dict], **top) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**top, "cases": cases}, sort_keys=False))
    return path


def run(store: Path, table: Path | None, sources=(), **options) -> IngestSummary:
    opts = IngestOptions(progress=False, labels=table, **options)
    return ingest([str(s) for s in sources], store, KEY, opts)


def volume_file(store: Path, volume_id: str) -> nib.Nifti1Image:
    return nib.load(Path(store) / "volumes" / f"{volume_id}.nii.gz")


def label_rejections(store: Path) -> list[dict]:
    return [r for r in sv.rejected(store) if r["unit"].startswith("label:")]


def seg_frames(ph: Phantom, values: list[int]) -> np.ndarray:
    """``[slices, rows, cols, segments]`` binary masks of ``values`` on the axial DICOM grid."""
    grid = make_slice_grid(ph, "axial")
    lab = sample_on_grid(ph.labels.astype(np.float32), ph.affine, grid, order=0, cval=0.0)
    return np.stack([np.rint(lab) == v for v in values], axis=-1).astype(np.uint8)


def write_seg(source_paths: list[Path], frames: np.ndarray, names: list[str], out: Path, *, fractional: bool = False) -> Path:
    """A DICOM SEG made by highdicom from the source series (stacking order = frames order)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in source_paths]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, name in enumerate(names, start=1)
    ]
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    pixels = frames.astype(np.float32) * 0.9 if fractional else frames
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medssl-tests",
        manufacturer_model_name="phantom",
        software_versions="1",
        device_serial_number="1",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
