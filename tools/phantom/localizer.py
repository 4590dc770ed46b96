"""Localizer (scout, survey) series: the planning images a scanner takes before the real scan.

They carry ``ImageType ORIGINAL\\PRIMARY\\LOCALIZER`` and full patient geometry
(ImagePositionPatient, ImageOrientationPatient), so a careless reader turns each one into a
one-slice "volume":

- CT scout: one projection image (the line integral of attenuation front to back) in the
  coronal plane through the phantom centre, ``SCOUT_COLUMNS`` columns across the phantom's
  right-left extent and as many rows (same spacing) as its head-feet extent. A phantom of
  512 x 400 mm (e.g. ``(128, 96, 100)`` voxels of 4 mm) gives the 512 x 400 scout of 1 mm
  that a naive reader stores as a 512 x 1 x 400 CT volume.
- MR three-plane localizer: one image each in the axial, sagittal and coronal plane through
  the phantom centre, in one series.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID
from scipy import ndimage

from tools.phantom.dicom_base import derived_uid, new_dataset, quantize, set_pixels
from tools.phantom.geometry import SliceGrid, make_slice_grid, sample_on_grid
from tools.phantom.radiograph import MU_WATER_PER_MM, STORED_PER_UNIT
from tools.phantom.scanner_quirks import ScannerQuirks
from tools.phantom.volume import RAS_TO_LPS, Phantom

LOCALIZER_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
SCOUT_COLUMNS = 512
THREE_PLANES = ("axial", "sagittal", "coronal")


def scout_grid(phantom: Phantom) -> SliceGrid:
    """The coronal image plane of a CT scout through the phantom centre (LPS, one 'slice')."""
    n_i, _, n_k = phantom.shape
    si, _, sk = phantom.spacing
    spacing = n_i * si / SCOUT_COLUMNS
    rows = max(1, int(round(n_k * sk / spacing)))
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])  # to patient Left, to Feet
    center = RAS_TO_LPS @ phantom.center_world
    first = center - row * spacing * (SCOUT_COLUMNS - 1) / 2.0 - col * spacing * (rows - 1) / 2.0
    return SliceGrid(
        row_cosine=row,
        col_cosine=col,
        positions=np.round(first, 6)[None] + 0.0,
        rows=rows,
        cols=SCOUT_COLUMNS,
        pixel_spacing=(float(spacing), float(spacing)),
        slice_thickness=1.0,
    )


def scout_pixels(phantom: Phantom, grid: SliceGrid) -> np.ndarray:
    """``[rows, cols]`` uint16: attenuation integrated front to back, sampled on ``grid``."""
    mu = MU_WATER_PER_MM * np.clip(1.0 + phantom.image / 1000.0, 0.0, None)
    integral = mu.sum(axis=1) * phantom.spacing[1]  # [I, K]
    ras = grid.pixel_world_lps()[0] @ RAS_TO_LPS.T
    ijk = phantom.world_to_voxel(ras.reshape(-1, 3))
    values = ndimage.map_coordinates(integral, ijk[:, [0, 2]].T, order=1, cval=0.0)
    stored = np.clip(np.rint(values * STORED_PER_UNIT), 0, 4095)
    return stored.reshape(grid.rows, grid.cols).astype(np.uint16)


def centre_plane(phantom: Phantom, orientation: str) -> SliceGrid:
    """The one slice of ``make_slice_grid(phantom, orientation)`` nearest the phantom centre."""
    grid = make_slice_grid(phantom, orientation)
    middle = grid.n_slices // 2
    return dataclasses.replace(grid, positions=grid.positions[middle : middle + 1])


def write_localizer(
    out_dir: str | Path,
    images: list[tuple[SliceGrid, np.ndarray]],
    fill: Callable[[Dataset], None],
    *,
    sop_class: UID,
    series_uid: UID,
    transfer_syntax: UID,
    quirks: ScannerQuirks,
    seed: int,
) -> list[Path]:
    """One file per ``(grid, pixels [rows, cols] uint16)``, all in series ``series_uid``.

    ``fill(ds)`` adds the modality attributes (as for a regular series); ImageType becomes
    ``LOCALIZER_IMAGE_TYPE``. Files are named ``LOC00001.dcm``, ... Returns their paths.
    """
    rng = np.random.default_rng([int(seed), 0x10CA1])
    paths = []
    for index, (grid, pixels) in enumerate(images):
        ds = new_dataset(sop_class, derived_uid(series_uid, "localizer", index), transfer_syntax)
        fill(ds)
        ds.ImageType = list(LOCALIZER_IMAGE_TYPE)
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        quirks.set_plane(ds, grid, 0, quirks.jitter(grid, rng))
        set_pixels(ds, pixels, bits_stored=12)
        quirks.before_save(ds)
        paths.append(quirks.save(ds, Path(out_dir) / f"LOC{index + 1:05d}.dcm", index))
    return paths


def ct_scout_images(phantom: Phantom) -> list[tuple[SliceGrid, np.ndarray]]:
    grid = scout_grid(phantom)
    return [(grid, scout_pixels(phantom, grid))]


def mr_three_plane_images(phantom: Phantom) -> list[tuple[SliceGrid, np.ndarray]]:
    images = []
    for orientation in THREE_PLANES:
        grid = centre_plane(phantom, orientation)
        values = sample_on_grid(phantom.image, phantom.affine, grid, order=1, cval=0.0)
        stored = quantize(values, slope=1.0, intercept=0.0, signed=False, bits_stored=12)
        images.append((grid, stored[0]))
    return images
