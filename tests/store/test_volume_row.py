"""VolumeRow: one typed field per manifest column, JSON decoded once, written back unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from medssl.store.manifest import VOLUME_COLUMNS, Manifest
from medssl.store.volume_row import VolumeRow
from medssl.types import GeometryKind, SourceKind
from tests.data.synthetic_store import Spec, add_row, volume_row, write_store


def test_one_field_per_column_plus_the_frame_of_a_series():
    assert {f.name for f in dataclasses.fields(VolumeRow)} == set(VOLUME_COLUMNS) | {"frame"}


def test_the_manifest_reads_rows_with_json_columns_decoded(tmp_path):
    store = write_store(tmp_path, [Spec((40, 36, 24), (2.0, 2.0, 3.0))])
    add_row(store, "x4d", ndim=4, shape=[6, 5, 4, 3], corrections=["resampled"], geometry="patient",
            frames=[{"time_s": float(t)} for t in range(3)], deid={"method": "basic"}, source_kind="dicom_files")
    with Manifest(store / "manifest.sqlite") as manifest:
        (v000, x4d) = manifest.volumes()
        assert manifest.volume("x4d") == x4d and manifest.volume("nope") is None
    assert (v000.volume_id, v000.ndim, v000.shape, v000.spacing, v000.axcodes) == ("v000", 3, (40, 36, 24), (2.0, 2.0, 3.0), "RAS")
    assert v000.affine == ((2.0, 0.0, 0.0, 0.0), (0.0, 2.0, 0.0, 0.0), (0.0, 0.0, 3.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert v000.source_kind is SourceKind.NIFTI and v000.corrections is None and v000.frames is None
    assert x4d.geometry is GeometryKind.PATIENT and x4d.source_kind is SourceKind.DICOM_FILES
    assert x4d.corrections == ("resampled",) and x4d.frames[2] == {"time_s": 2.0} and x4d.deid == {"method": "basic"}
    assert x4d.spacing is None and x4d.frame is None  # NULL stays None; frame is no column


def test_written_back_a_row_reads_back_equal(tmp_path):
    store = write_store(tmp_path, [Spec()])
    add_row(store, "x4d", ndim=4, shape=[6, 5, 4, 3], frames=[{"b_value": 0}], geometry="none")
    with Manifest(store / "manifest.sqlite") as manifest:
        rows = manifest.volumes()
        for row in rows:
            manifest.add_volume(dataclasses.replace(row, volume_id=f"copy-{row.volume_id}").to_row())
        copies = {r.volume_id: r for r in manifest.volumes()}
    for row in rows:
        assert copies[f"copy-{row.volume_id}"] == dataclasses.replace(row, volume_id=f"copy-{row.volume_id}")


def test_a_row_without_its_required_columns_is_refused():
    with pytest.raises(ValueError, match="no sha256"):
        VolumeRow.from_row({"volume_id": "x", "path": "volumes/x.nii.gz"})
    assert volume_row(shape="[3,2]").shape == (3, 2)
