"""Spec: geometry tolerances are true to DICOM's decimal precision.

Positions and cosines are decimal strings of at most 16 characters, so real slice origins
carry rounding noise. The slice step is the least-squares slope of all positions; spacing is
irregular only beyond an absolute tolerance in mm that covers rounding; a shear is judged
by the in-plane drift of the actual slice origins, is noise below 0.1 mm, and is gantry tilt
only where a gantry can tilt (CT, PET, ...) or GantryDetectorTilt says so.
"""

from __future__ import annotations

import numpy as np
import pytest

from medssl.io.dicom_scan import scan_file
from medssl.io.dicom_stack import build_stacks
from medssl.io.sources import iter_source_items
from medssl.types import RejectReason
from tests.store import dicom_factory as f


def stack_of(tmp_path, template: str, positions, drift_mm_per_slice: float = 0.0, jitter_mm: float = 0.0, **attributes):
    series = f.make_series(len(positions), template=template, positions=positions)
    row = np.array([float(v) for v in series[0].ImageOrientationPatient[:3]])
    rng = np.random.default_rng(0)
    for k, ds in enumerate(series):
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + row * (drift_mm_per_slice * k + jitter_mm * rng.uniform(-1, 1))
        ds.ImagePositionPatient = [f.ds_str(v) for v in ipp]
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    folder = tmp_path / "in"
    f.write(series, folder)
    records = [r for item in iter_source_items(folder) for r in scan_file(item, item.read_bytes())]
    stacks, failed = build_stacks(records)
    assert not failed and len(stacks) == 1
    return stacks[0]


@pytest.mark.parametrize("template", [f.CT, f.MR])
def test_rounding_jitter_of_a_few_hundredths_of_a_mm_is_not_a_shear(tmp_path, template):
    stack = stack_of(tmp_path, template, [5.0 * k for k in range(8)], jitter_mm=0.04)
    assert (stack.irregularity, stack.tilt_deg) == (None, 0.0)


def test_a_drift_beyond_noise_on_mr_is_a_shear_not_gantry_tilt(tmp_path):
    stack = stack_of(tmp_path, f.MR, [5.0 * k for k in range(8)], drift_mm_per_slice=0.5)
    assert stack.irregularity == RejectReason.SHEARED
    assert stack.tilt_deg == pytest.approx(np.degrees(np.arctan(0.5 / 5.0)), abs=0.05)


def test_the_same_drift_on_ct_is_gantry_tilt(tmp_path):
    stack = stack_of(tmp_path, f.CT, [5.0 * k for k in range(8)], drift_mm_per_slice=0.5)
    assert stack.irregularity == RejectReason.GANTRY_TILT and "sheared by 5.71 degrees" in stack.detail


def test_mr_with_a_gantry_detector_tilt_is_gantry_tilt(tmp_path):
    stack = stack_of(tmp_path, f.MR, [5.0 * k for k in range(8)], drift_mm_per_slice=0.5, GantryDetectorTilt=5.71)
    assert stack.irregularity == RejectReason.GANTRY_TILT


def test_the_slice_step_is_the_least_squares_slope_of_all_positions(tmp_path):
    positions = [0.0, 5.03, 9.97, 15.02, 20.01, 24.96, 30.03, 34.99]
    stack = stack_of(tmp_path, f.CT, positions)
    slope = np.polyfit(np.arange(8), positions, 1)[0]
    assert stack.irregularity is None and stack.step == pytest.approx(slope, abs=1e-4)
    assert stack.step != pytest.approx(float(np.median(np.diff(positions))), abs=1e-4)


@pytest.mark.parametrize(("offset_mm", "regular"), [(0.03, True), (0.3, False)])
def test_uneven_spacing_is_judged_in_absolute_mm(tmp_path, offset_mm, regular):
    positions = [2.0 * k for k in range(10)]
    positions[6] += offset_mm
    stack = stack_of(tmp_path, f.CT, positions)
    assert (stack.irregularity is None) == regular
    if not regular:
        assert stack.irregularity == RejectReason.UNEVEN_SPACING


def test_missing_slices_are_found_on_the_fitted_grid(tmp_path):
    positions = [2.5 * k + (0.02 if k % 2 else 0.0) for k in range(12) if k not in (4, 5)]
    stack = stack_of(tmp_path, f.CT, positions)
    assert stack.irregularity == RejectReason.MISSING_SLICES and "2 slice(s) missing" in stack.detail
    assert stack.step == pytest.approx(2.5, abs=0.01)


def test_orientations_within_ds_rounding_are_one_stack(tmp_path):
    """Cosines written to 6 digits differ from slice to slice in the last digit: one volume."""
    series = f.make_series(6, template=f.MR)
    for k, ds in enumerate(series):
        iop = [float(v) for v in ds.ImageOrientationPatient]
        ds.ImageOrientationPatient = [f"{v + (1e-6 if k % 2 else 0.0):.6f}" for v in iop]
    f.write(series, tmp_path / "in")
    records = [r for item in iter_source_items(tmp_path / "in") for r in scan_file(item, item.read_bytes())]
    stacks, failed = build_stacks(records)
    assert not failed and len(stacks) == 1 and stacks[0].n_slices == 6
