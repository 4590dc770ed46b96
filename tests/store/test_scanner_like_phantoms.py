"""Spec (issue 11, "Real scanners, every vendor"): series as scanners write them ingest.

Each phantom comes from ``tools.phantom`` with one scanner habit switched on, and goes
through the real ``ingest``:

- DS-rounded geometry (cosines of 6 significant digits, origins jittered in-plane by
  < 0.1 mm) converts, with no gantry-tilt or shear refusal, within 0.1 mm of the truth;
- zero bytes after Pixel Data are not a truncated file, and change no voxel;
- an over-long private value does not refuse the series (de-identification drops it);
- a localizer (CT scout, MR three-plane) is a 2D image or skipped, never a thin 3D slab.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.store import store_view as sv
from tests.store.ingest_run import run, single_volume
from tools.phantom import (
    Phantom,
    make_ct_phantom,
    make_mr_phantom,
    make_slice_grid,
    write_ct_series,
    write_mr_series,
)
from tools.phantom.scanner_quirks import LONG_PRIVATE_VALUE

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_A, _B = np.deg2rad(20.0), np.deg2rad(10.0)
_ROT = np.array([[np.cos(_B), -np.sin(_B), 0], [np.sin(_B), np.cos(_B), 0], [0, 0, 1]]) @ np.array(
    [[1, 0, 0], [0, np.cos(_A), -np.sin(_A)], [0, np.sin(_A), np.cos(_A)]]
)
# 20 degrees about the left-right axis, then 10 about head-feet
DOUBLE_OBLIQUE = tuple(float(v) for v in (*_ROT[:, 0], *_ROT[:, 1]))


@pytest.fixture(scope="module")
def ct() -> Phantom:
    return make_ct_phantom((48, 40, 24), (4.0, 4.0, 6.0), seed=11, n_lesions=2)


@pytest.fixture(scope="module")
def mr() -> Phantom:
    return make_mr_phantom((48, 40, 24), (4.0, 4.0, 6.0), seed=11, n_lesions=1)


def _truth_corners(phantom: Phantom, orientation) -> np.ndarray:
    """RAS mm of the 8 corner voxel centres of the grid the generator sampled."""
    grid = make_slice_grid(phantom, orientation)
    dr, dc = grid.pixel_spacing
    lps = [
        grid.positions[k] + i * dc * grid.row_cosine + j * dr * grid.col_cosine
        for i in (0, grid.cols - 1)
        for j in (0, grid.rows - 1)
        for k in (0, grid.n_slices - 1)
    ]
    return np.array(lps) @ LPS_TO_RAS


def _stored_corners(row: dict) -> np.ndarray:
    affine = np.array(json.loads(row["affine"]))
    shape = json.loads(row["shape"])
    ni, nj, nk = (n - 1 for n in shape[:3])
    ijk = [(i, j, k, 1) for i in (0, ni) for j in (0, nj) for k in (0, nk)]
    return (np.array(ijk, float) @ affine.T)[:, :3]


def _corner_error_mm(row: dict, truth: np.ndarray) -> float:
    stored = _stored_corners(row)
    return float(max(np.linalg.norm(truth - p, axis=1).min() for p in stored))


# -- DS rounding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "orientation"),
    [("CT", "axial"), ("CT", DOUBLE_OBLIQUE), ("MR", DOUBLE_OBLIQUE)],
    ids=["ct-axial", "ct-double-oblique", "mr-double-oblique"],
)
def test_ds_rounded_series_converts_within_a_tenth_of_a_mm(ct, mr, tmp_path, modality, orientation):
    phantom = ct if modality == "CT" else mr
    writer = write_ct_series if modality == "CT" else write_mr_series
    writer(phantom, tmp_path / "src", orientation=orientation, ds_rounding=True, seed=5)
    summary = run(tmp_path / "src", tmp_path / "store")
    assert sv.rejected(tmp_path / "store") == []  # no gantry_tilt / sheared / uneven refusal
    assert (summary.written, sum(summary.rejected.values())) == (1, 0)
    row = single_volume(tmp_path / "store")
    assert row["ndim"] == 3 and sorted(json.loads(row["shape"])) == sorted(phantom.shape)
    corrections = json.loads(row["corrections"] or "[]")
    assert not [c for c in corrections if c.startswith(("gantry_tilt", "resampled"))], corrections
    assert _corner_error_mm(row, _truth_corners(phantom, orientation)) < 0.1


# -- bytes after Pixel Data ----------------------------------------------------------------------


@pytest.mark.parametrize("n_bytes", [1, 8, 255], ids=["1-byte", "8-bytes", "255-bytes"])
def test_zero_bytes_after_pixel_data_are_not_a_truncated_file(ct, tmp_path, n_bytes):
    write_ct_series(ct, tmp_path / "plain", seed=6)
    write_ct_series(ct, tmp_path / "padded", seed=6, pad_after_pixels=n_bytes)
    run(tmp_path / "plain", tmp_path / "store_plain")
    run(tmp_path / "padded", tmp_path / "store_padded")
    assert [r["code"] for r in sv.rejected(tmp_path / "store_padded")] == []
    plain = single_volume(tmp_path / "store_plain")
    padded = single_volume(tmp_path / "store_padded")
    assert padded["sha256"] == plain["sha256"]  # the same voxels and geometry, byte for byte


# -- over-long private values -----------------------------------------------------------------


def test_over_long_private_value_does_not_refuse_the_series_and_is_dropped(mr, tmp_path):
    write_mr_series(mr, tmp_path / "src", seed=7, long_private_value=True)
    run(tmp_path / "src", tmp_path / "store")
    assert sv.rejected(tmp_path / "store") == []
    row = single_volume(tmp_path / "store")
    assert json.loads(row["shape"]) == list(mr.shape)
    if row.get("header_path"):
        header = (tmp_path / "store" / row["header_path"]).read_text()
        assert LONG_PRIVATE_VALUE not in header and "SIEMENS MR HEADER" not in header


# -- localizers ---------------------------------------------------------------------------------


def _assert_no_thin_slab(store: Path) -> list[dict]:
    rows = sv.volumes(store)
    for row in rows:
        shape = json.loads(row["shape"])
        assert row["ndim"] == 2, f"localizer stored as a {shape} volume"
    return rows


def test_ct_scout_is_a_2d_image_or_skipped_not_a_512x1x400_volume(tmp_path):
    phantom = make_ct_phantom((128, 96, 100), (4.0, 4.0, 4.0), seed=0, n_lesions=0)
    write_ct_series(phantom, tmp_path / "src", localizer=True)
    run(tmp_path / "src", tmp_path / "store")
    for row in _assert_no_thin_slab(tmp_path / "store"):
        assert sorted(json.loads(row["shape"])) == [400, 512]


def test_mr_three_plane_localizer_is_2d_images_or_skipped(mr, tmp_path):
    write_mr_series(mr, tmp_path / "src", localizer=True)
    run(tmp_path / "src", tmp_path / "store")
    assert len(_assert_no_thin_slab(tmp_path / "store")) in (0, 3)


def test_a_scout_next_to_its_series_leaves_the_series_intact(ct, tmp_path):
    write_ct_series(ct, tmp_path / "src" / "scout", series_number=1, localizer=True)
    write_ct_series(ct, tmp_path / "src" / "axial", series_number=2, ds_rounding=True)
    run(tmp_path / "src", tmp_path / "store")
    rows = sv.volumes(tmp_path / "store")
    volumes = [r for r in rows if r["ndim"] == 3]
    assert len(volumes) == 1 and sorted(json.loads(volumes[0]["shape"])) == sorted(ct.shape)
    assert all(r["ndim"] == 2 for r in rows if r is not volumes[0])
