"""What real scanners write that a textbook writer does not: rounded geometry, bytes after
the pixels, over-long private values. All off by default; seeded and deterministic.

- ``ds_rounding``: Image Plane values as scanners write them. Direction cosines keep ~6
  significant digits (``0.965926``; GE and Siemens), so row and column are no longer
  exactly orthonormal; each slice origin jitters in the image plane by a seeded offset of
  at most ``JITTER_MM`` (their float32 geometry), and every DS value is the shortest
  string of at most 16 characters (``pydicom.valuerep.format_number_as_ds``). The pixels
  are still sampled on the true grid: a reader must land within ``JITTER_MM`` + rounding.
- ``pad_after_pixels=N``: ``N`` zero bytes after the Pixel Data element in the files at
  even stack positions (0, 2, ...), as some scanners and PACS exports leave them.
- ``long_private_value``: a Siemens private block (creator ``SIEMENS MR HEADER`` at
  (0019,0010)) whose SH element (0019,100F) holds ``LONG_PRIVATE_VALUE``, 21 characters
  where SH allows 16; written raw, as scanners do, past pydicom's validation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from tools.phantom.dicom_base import ds_number, save
from tools.phantom.geometry import SliceGrid

JITTER_MM = 0.04  # radius of the in-plane jitter of slice origins: two origins differ by < 0.1 mm
COSINE_DIGITS = 6  # significant digits of direction cosines, as GE and Siemens write them
PRIVATE_CREATOR = "SIEMENS MR HEADER"
PRIVATE_GROUP = 0x0019
LONG_PRIVATE_TAG = Tag(0x0019, 0x100F)  # GradientMode, SH in Siemens' dictionary
LONG_PRIVATE_VALUE = "FAST_GRADIENT_MODE_01"  # 21 characters; SH holds 16


@dataclass(frozen=True)
class ScannerQuirks:
    """Which scanner habits a phantom writer reproduces (see the module docstring)."""

    ds_rounding: bool = False
    pad_after_pixels: int = 0
    long_private_value: bool = False

    def __post_init__(self) -> None:
        if int(self.pad_after_pixels) < 0:
            raise ValueError(f"pad_after_pixels must be >= 0 bytes, got {self.pad_after_pixels}")

    def jitter(self, grid: SliceGrid, rng: np.random.Generator) -> np.ndarray:
        """``(n_slices, 3)`` LPS mm in-plane offsets of the written origins (zeros when off)."""
        if not self.ds_rounding:
            return np.zeros((grid.n_slices, 3))
        radius = JITTER_MM * np.sqrt(rng.random(grid.n_slices))
        angle = 2.0 * np.pi * rng.random(grid.n_slices)
        along_row, along_col = radius * np.cos(angle), radius * np.sin(angle)
        return along_row[:, None] * grid.row_cosine + along_col[:, None] * grid.col_cosine

    def set_plane(self, ds: Dataset, grid: SliceGrid, s: int, jitter: np.ndarray) -> None:
        """Image Plane module of slice ``s``: exact (the default) or as scanners round it."""
        if self.ds_rounding:
            set_scanner_plane(ds, grid, s, jitter)
        else:
            set_plane(ds, grid, s)

    def before_save(self, ds: Dataset) -> None:
        if self.long_private_value:
            add_long_private_value(ds)

    def save(self, ds: Dataset, path: Path, stack_index: int) -> Path:
        """Write ``ds`` to ``path``, then pad it when its stack position is even."""
        with _tolerant_validation() if self.long_private_value else contextlib.nullcontext():
            save(ds, path)
        if self.pad_after_pixels and stack_index % 2 == 0:
            with open(path, "ab") as f:
                f.write(b"\0" * int(self.pad_after_pixels))
        return path


@contextlib.contextmanager
def _tolerant_validation() -> Iterator[None]:
    """pydicom validates a raw value when it is set and written; here it is the point."""
    settings = config.settings
    previous = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


def set_plane(ds: Dataset, grid: SliceGrid, s: int) -> None:
    """Image Plane module of slice ``s`` of ``grid``, exactly as the pixels were sampled."""
    ds.ImagePositionPatient = [ds_number(v) for v in grid.positions[s]]
    ds.ImageOrientationPatient = [ds_number(v) for v in grid.image_orientation]
    ds.PixelSpacing = [ds_number(v) for v in grid.pixel_spacing]
    ds.SliceThickness = ds_number(grid.slice_thickness)
    ds.SpacingBetweenSlices = ds_number(abs(grid.slice_spacing))
    ds.SliceLocation = ds_number(float(np.dot(grid.positions[s], grid.normal)))


def scanner_ds(value: float) -> str:
    """``value`` as the shortest DS string (at most 16 characters) that holds it."""
    text = format_number_as_ds(float(value))
    return "0" if text in ("-0", "-0.0", "0.0") else text


def scanner_cosine(value: float) -> str:
    """A direction cosine rounded to ``COSINE_DIGITS`` significant digits (``-0.258819``)."""
    rounded = float(f"{float(value):.{COSINE_DIGITS}g}")
    return scanner_ds(0.0 if abs(rounded) < 1e-12 else rounded)


def set_scanner_plane(ds: Dataset, grid: SliceGrid, s: int, jitter: np.ndarray) -> None:
    """Image Plane module of slice ``s`` written the way scanners round it."""
    position = grid.positions[s] + jitter[s]
    ds.ImagePositionPatient = [scanner_ds(v) for v in position]
    ds.ImageOrientationPatient = [scanner_cosine(v) for v in grid.image_orientation]
    ds.PixelSpacing = [scanner_ds(v) for v in grid.pixel_spacing]
    ds.SliceThickness = scanner_ds(grid.slice_thickness)
    ds.SpacingBetweenSlices = scanner_ds(abs(grid.slice_spacing))
    ds.SliceLocation = scanner_ds(float(np.dot(position, grid.normal)))


def add_long_private_value(ds: Dataset) -> None:
    """The Siemens private block with an SH value over SH's 16-character limit (raw bytes)."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    tag = block.get_tag(LONG_PRIVATE_TAG.element & 0xFF)
    value = LONG_PRIVATE_VALUE.encode("ascii")
    value += b" " * (len(value) % 2)  # even length, space-padded as DICOM requires
    with _tolerant_validation():  # written as it is, as a scanner would
        ds[tag] = RawDataElement(tag, "SH", len(value), value, 0, False, True)
