"""Non-DICOM volume files of a phantom: NIfTI-1 (nibabel) and NRRD (pynrrd), true world geometry.

NIfTI: data ``[I, J, K]`` as is, ``affine`` as both sform and qform with code 1 (scanner),
so ``nibabel.load(path).affine == phantom.affine``.
NRRD: ``space: left-posterior-superior`` (as 3D Slicer writes it); ``space directions``
and ``space origin`` are the affine flipped to LPS, data in Fortran index order so the
first NRRD axis is ``i``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from tools.phantom.volume import RAS_TO_LPS, Phantom


def _nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def write_nifti(
    phantom: Phantom, path: str | Path, *, labels_path: str | Path | None = None
) -> Path:
    """Write ``phantom.image`` (float32) to ``path`` (.nii / .nii.gz), labels (uint8) if asked.

    Returns ``path``.
    """
    _nifti(phantom.image.astype(np.float32, copy=False), phantom.affine, Path(path))
    if labels_path is not None:
        _nifti(phantom.labels.astype(np.uint8, copy=False), phantom.affine, Path(labels_path))
    return Path(path)


def nrrd_header(phantom: Phantom) -> dict:
    """The pynrrd header describing the phantom's grid in LPS."""
    lps = RAS_TO_LPS @ phantom.affine[:3, :3]
    return {
        "space": "left-posterior-superior",
        "space directions": lps.T,  # row n = world step of axis n
        "space origin": RAS_TO_LPS @ phantom.affine[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }


def _write_reproducible_nrrd(path: Path, data: np.ndarray, header: dict) -> None:
    """pynrrd writes the current time into a header comment; drop it so bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, dict(header), index_order="F")
    raw = path.read_bytes()
    head, sep, body = raw.partition(b"\n\n")  # attached data starts after the blank line
    head = re.sub(rb"\n# on [^\n]*\(GMT\)\.", b"", head, count=1)
    path.write_bytes(head + sep + body)


def write_nrrd(
    phantom: Phantom, path: str | Path, *, labels_path: str | Path | None = None
) -> Path:
    """Write ``phantom.image`` to ``path`` (``.nrrd``, gzip), labels if asked. Returns ``path``."""
    header = nrrd_header(phantom)
    _write_reproducible_nrrd(Path(path), phantom.image.astype(np.float32, copy=False), header)
    if labels_path is not None:
        _write_reproducible_nrrd(
            Path(labels_path), phantom.labels.astype(np.uint8, copy=False), header
        )
    return Path(path)
