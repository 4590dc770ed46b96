"""Reference conversions for geometry tests: dcm2niix (the field's reference) vs medssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl.io.dicom_scan import scan_file
from medssl.io.dicom_stack import build_stacks
from medssl.io.dicom_volume import read_stack
from medssl.io.sources import SourceItem, iter_source_items
from medssl.io.volume import Volume


def dcm2niix_binary() -> str:
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed (pip install dcm2niix, or apt-get install dcm2niix)")
    return exe


def dcm2niix_volumes(folder: Path, out: Path) -> list[nib.Nifti1Image]:
    """Every NIfTI dcm2niix writes for ``folder``, in RAS+ voxel order (as_closest_canonical)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcm2niix_binary(), "-z", "n", "-b", "n", "-o", str(out), "-f", "%s_%z", str(folder)], check=True, capture_output=True)
    return [nib.as_closest_canonical(nib.load(p)) for p in sorted(out.glob("*.nii"))]


def medssl_volumes(folder: Path, **stack_kwargs) -> list[Volume]:
    records = []
    for item in iter_source_items(folder):
        assert isinstance(item, SourceItem)
        records += scan_file(item, item.read_bytes())
    stacks, failed = build_stacks(records)
    assert not failed, [str(e) for _, e in failed]
    return [read_stack(s, lambda it: it.read_bytes())[0] for s in stacks]


def assert_same_geometry(ours: Volume, ref: nib.Nifti1Image, atol_mm: float = 0.01, values: bool = True) -> None:
    """Same shape, affine within ``atol_mm`` (both in RAS+ order) and, optionally, same voxel values."""
    assert ours.array.shape == ref.shape[: ours.array.ndim], (ours.array.shape, ref.shape)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=atol_mm)
    if values:
        np.testing.assert_allclose(ours.array, ref.get_fdata().reshape(ours.array.shape), atol=1e-3)
