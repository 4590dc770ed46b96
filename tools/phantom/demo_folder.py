"""A small mixed DICOM folder for demos and end-to-end tests: several studies, mixed series.

Layout under ``out``::

    dicom/study_<n>/series_<m>/...        DICOM files (random names, shuffled instances)
    ground_truth/<patient_id>_image.nii.gz, _labels.nii.gz   the phantom, true world geometry
    phantom_manifest.json                 what each series is, its UIDs, the lesions

Series cycle through recipes (axial, oblique, compressed, gantry tilt, gaps, multi-frame,
...) so even ``n_series=3`` gives an oblique and a compressed series.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom

from tools.phantom.anatomy import make_ct_phantom, make_mr_phantom
from tools.phantom.dicom_series import default_study_uid, write_ct_series, write_mr_series
from tools.phantom.enhanced import write_enhanced_multiframe
from tools.phantom.mosaic import write_mosaic
from tools.phantom.radiograph import write_radiograph
from tools.phantom.volume import Phantom
from tools.phantom.volume_files import write_nifti


def oblique_orientation(about_z_deg: float, about_x_deg: float) -> list[float]:
    """ImageOrientationPatient of axial planes rotated about z, then about x (LPS)."""
    a, b = np.deg2rad(about_z_deg), np.deg2rad(about_x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    r = rx @ rz
    return [round(float(v), 8) for v in (*r[:, 0], *r[:, 1])]


@dataclass(frozen=True)
class SeriesRecord:
    """One written series, as listed in the manifest."""

    path: str
    recipe: str
    modality: str
    transfer_syntax: str
    patient_id: str
    study_uid: str
    series_number: int
    n_files: int


Recipe = tuple[str, str, Callable[..., list[Path]]]


def _series(writer: Callable[..., list[Path]], **fixed: object) -> Callable[..., list[Path]]:
    def write(ph: Phantom, folder: Path, **ids: object) -> list[Path]:
        return writer(ph, folder, **fixed, **ids)

    return write


def _single(writer: Callable[..., Path], name: str, **fixed: object) -> Callable[..., list[Path]]:
    def write(ph: Phantom, folder: Path, **ids: object) -> list[Path]:
        ids.pop("seed", None)
        return [writer(ph, folder / name, **fixed, **ids)]

    return write


def _radiograph(ph: Phantom, folder: Path, **ids: object) -> list[Path]:
    ids.pop("seed", None)
    return [
        write_radiograph(
            folder / "chest_pa.dcm", phantom=ph, transfer_syntax="JPEG2000Lossless", **ids
        )
    ]  # type: ignore[arg-type]


OBLIQUE = oblique_orientation(15.0, 20.0)
CT_RECIPES: list[Recipe] = [
    ("axial", "ExplicitVRLittleEndian", _series(write_ct_series)),
    ("oblique", "ExplicitVRLittleEndian", _series(write_ct_series, orientation=OBLIQUE)),
    ("compressed", "JPEGLosslessSV1", _series(write_ct_series, transfer_syntax="JPEGLosslessSV1")),
    ("gantry_tilt", "ExplicitVRLittleEndian", _series(write_ct_series, gantry_tilt_deg=12.0)),
    (
        "gaps",
        "RLELossless",
        _series(
            write_ct_series,
            transfer_syntax="RLELossless",
            missing_slices=(5,),
            duplicate_slices=(9,),
        ),
    ),
    (
        "enhanced",
        "JPEGLSLossless",
        _single(write_enhanced_multiframe, "ct_multiframe.dcm", transfer_syntax="JPEGLSLossless"),
    ),
    (
        "coronal",
        "ImplicitVRLittleEndian",
        _series(
            write_ct_series,
            orientation="coronal",
            transfer_syntax="ImplicitVRLittleEndian",
            file_names="instance",
        ),
    ),
    ("radiograph", "JPEG2000Lossless", _radiograph),
]
MR_RECIPES: list[Recipe] = [
    ("axial", "ExplicitVRLittleEndian", _series(write_mr_series)),
    ("oblique", "ExplicitVRLittleEndian", _series(write_mr_series, orientation=OBLIQUE)),
    (
        "compressed",
        "JPEG2000Lossless",
        _series(write_mr_series, transfer_syntax="JPEG2000Lossless"),
    ),
    ("enhanced", "ExplicitVRLittleEndian", _single(write_enhanced_multiframe, "mr_multiframe.dcm")),
    ("mosaic", "ExplicitVRLittleEndian", _single(write_mosaic, "mosaic.dcm")),
    (
        "sagittal_gaps",
        "JPEGLSLossless",
        _series(
            write_mr_series,
            orientation="sagittal",
            transfer_syntax="JPEGLSLossless",
            missing_slices=(3,),
        ),
    ),
]


def write_demo_folder(
    out: str | Path,
    *,
    kind: str = "ct",
    n_series: int = 4,
    seed: int = 0,
    shape: tuple[int, int, int] = (96, 96, 48),
    spacing: tuple[float, float, float] = (4.0, 4.0, 6.0),
    progress: Callable[[str], None] | None = None,
) -> list[SeriesRecord]:
    """Write ``n_series`` series of ``kind`` (``"ct"`` or ``"mr"``) spread over up to 3 studies.

    Each study is one patient with its own phantom (seed ``seed * 100 + study``).
    Returns the records also written to ``phantom_manifest.json``.
    """
    if kind not in ("ct", "mr"):
        raise ValueError(f"kind must be 'ct' or 'mr', got {kind!r}")
    if n_series < 1:
        raise ValueError(f"n_series must be >= 1, got {n_series}")
    out = Path(out)
    recipes = CT_RECIPES if kind == "ct" else MR_RECIPES
    make = make_ct_phantom if kind == "ct" else make_mr_phantom
    n_studies = max(1, min(3, (n_series + 2) // 3))
    phantoms, studies = [], []
    for s in range(n_studies):
        ph = make(shape, spacing, seed=seed * 100 + s, n_lesions=4)
        patient_id = f"PHANTOM{seed:03d}{s:02d}"
        phantoms.append(ph)
        studies.append(
            {
                "patient_id": patient_id,
                "patient_name": f"PHANTOM^CASE{seed:03d}{s:02d}",
                "study_uid": str(default_study_uid(patient_id, ph.seed)),
            }
        )
        gt = out / "ground_truth"
        write_nifti(
            ph, gt / f"{patient_id}_image.nii.gz", labels_path=gt / f"{patient_id}_labels.nii.gz"
        )
    records = []
    for n in range(n_series):
        s = n % n_studies
        recipe, ts, write = recipes[n % len(recipes)]
        folder = out / "dicom" / f"study_{s + 1}" / f"series_{n // n_studies + 1}"
        if progress:
            progress(f"series {n + 1}/{n_series}: {recipe} ({ts})")
        paths = write(
            phantoms[s],
            folder,
            patient_name=studies[s]["patient_name"],
            patient_id=studies[s]["patient_id"],
            study_uid=studies[s]["study_uid"],
            series_number=n // n_studies + 1,
            seed=seed * 1000 + n,
            series_description=f"{phantoms[s].modality} {recipe}",
        )
        header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        records.append(
            SeriesRecord(
                path=str(folder.relative_to(out)),
                recipe=recipe,
                modality=str(header.Modality),
                transfer_syntax=ts,
                patient_id=studies[s]["patient_id"],
                study_uid=studies[s]["study_uid"],
                series_number=n // n_studies + 1,
                n_files=len(paths),
            )
        )
    manifest = {
        "kind": kind,
        "seed": seed,
        "shape": list(shape),
        "spacing": list(spacing),
        "series": [asdict(r) for r in records],
        "patients": [
            {
                **st,
                "label_names": {str(k): v for k, v in ph.label_names.items()},
                "lesions": [asdict(les) for les in ph.lesions],
            }
            for st, ph in zip(studies, phantoms)
        ],
    }
    (out / "phantom_manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )
    return records
