"""Independent readers the phantom tests check the writers against (pydicom, dcm2niix)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from tools.phantom import Phantom

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def real_values(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values with the rescale applied (slope 1, intercept 0 when absent)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    return ds.pixel_array.astype(np.float64) * slope + intercept


def pixel_world_ras(ds: pydicom.Dataset) -> np.ndarray:
    """``[rows, cols, 3]`` RAS mm of every pixel centre, from the slice's own tags only."""
    ipp = np.array(ds.ImagePositionPatient, dtype=np.float64)
    iop = np.array(ds.ImageOrientationPatient, dtype=np.float64)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = np.mgrid[: ds.Rows, : ds.Columns]
    lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
    return lps * LPS_TO_RAS


def phantom_at(phantom: Phantom, ras: np.ndarray) -> np.ndarray:
    """The phantom linearly interpolated at RAS points ``[..., 3]`` (air outside)."""
    ijk = phantom.world_to_voxel(ras.reshape(-1, 3))
    values = ndimage.map_coordinates(phantom.image, ijk.T, order=1, cval=phantom.background_value)
    return values.reshape(ras.shape[:-1])


def inside_phantom(phantom: Phantom, ras: np.ndarray) -> np.ndarray:
    ijk = phantom.world_to_voxel(ras.reshape(-1, 3))
    ok = np.all((ijk >= 0) & (ijk <= np.asarray(phantom.shape) - 1), axis=1)
    return ok.reshape(ras.shape[:-1])


def read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    """Datasets sorted by position along the slice normal (never by InstanceNumber)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(
        datasets, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal))
    )


def folder_digest(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dcm2niix(in_dir: Path, out_dir: Path) -> list[Path]:
    """Run dcm2niix on ``in_dir``; the NIfTI files it wrote, sorted by name."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not on PATH (apt-get install dcm2niix or pip install dcm2niix)")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["dcm2niix", "-z", "n", "-o", str(out_dir), "-f", "out", str(in_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"dcm2niix failed ({result.returncode}): {result.stdout[-2000:]} {result.stderr[-2000:]}"
    )
    return sorted(out_dir.glob("*.nii"))


def nifti_world_ras(img: nib.Nifti1Image) -> np.ndarray:
    """``[I, J, K, 3]`` RAS mm of every voxel of a NIfTI image."""
    ijk = np.indices(img.shape[:3]).reshape(3, -1).T
    return (ijk @ img.affine[:3, :3].T + img.affine[:3, 3]).reshape(*img.shape[:3], 3)
