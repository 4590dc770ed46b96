"""Spec: how ingest turns DICOM files into stacks: order, gaps, duplicates, series and archives.

Slices are sorted along the slice normal, never by file name or InstanceNumber; a gap or
a repeated position is refused unless resampling is allowed; copies of one instance
count once; a series is the same volume wherever its files come from.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medssl.types import IrregularPolicy
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import only, run, single_volume

# -- slice order ----------------------------------------------------------------------------


def test_shuffled_slices_with_misleading_names_give_the_same_volume(tmp_path):
    series = f.make_series(6)
    f.write(series, tmp_path / "sorted")
    order = list(range(6))
    random.Random(5).shuffle(order)
    # names that sort the wrong way round, in nested folders, some without a .dcm suffix
    for rank, k in enumerate(order):
        folder = tmp_path / "shuffled" / ("b" if rank % 2 else "a")
        f.write([series[k]], folder, names=[f"IMG{5 - k:04d}" + (".dcm" if k % 3 else ".txt")])
    run(tmp_path / "sorted", tmp_path / "s1")
    run(tmp_path / "shuffled", tmp_path / "s2")
    a, b = single_volume(tmp_path / "s1"), single_volume(tmp_path / "s2")
    assert (a["volume_id"], a["sha256"], a["n_images"]) == (b["volume_id"], b["sha256"], 6)


def test_slices_are_sorted_by_position_not_instance_number(tmp_path):
    series = f.make_series(6)
    f.write(series, tmp_path / "forward")
    reversed_numbers = [copy.deepcopy(ds) for ds in series]
    for k, ds in enumerate(reversed_numbers):
        ds.InstanceNumber = 6 - k
    f.write(reversed_numbers, tmp_path / "reversed")
    run(tmp_path / "forward", tmp_path / "s1")
    run(tmp_path / "reversed", tmp_path / "s2")
    assert single_volume(tmp_path / "s1")["sha256"] == single_volume(tmp_path / "s2")["sha256"]
    data = np.asarray(nib.load(tmp_path / "s2" / single_volume(tmp_path / "s2")["path"]).dataobj)
    # slices step +5 mm along +z (superior); the stored pixel offset grows by 10 per slice
    assert np.all(np.diff(data.astype(int).mean(axis=(0, 1))) == pytest.approx(10))


# -- irregular stacks -----------------------------------------------------------------------


@pytest.fixture
def gap(tmp_path: Path) -> tuple[Path, list[Dataset]]:
    """A 6-slice series with slice 3 missing."""
    series = f.make_series(6)
    f.write([ds for k, ds in enumerate(series) if k != 3], tmp_path / "gap")
    return tmp_path / "gap", series


def test_a_missing_slice_is_rejected_by_default(gap, tmp_path):
    source, _ = gap
    store = tmp_path / "store"
    summary = run(source, store)
    assert (summary.written, dict(summary.rejected)) == (0, {"missing_slices": 1})
    row = only(sv.rejected(store), code="missing_slices")
    assert "missing" in row["message"] and "resample" in row["message"]
    assert sv.files(store, "volumes") == []


def test_a_missing_slice_is_resampled_onto_the_full_grid_when_allowed(gap, tmp_path):
    source, series = gap
    store = tmp_path / "store"
    run(source, store)  # refused first: the rerun with resampling replaces the refusal
    summary = run(source, store, irregular=IrregularPolicy.RESAMPLE)
    assert summary.written == 1
    row = single_volume(store)
    corrections = json.loads(row["corrections"])
    assert corrections and any("resampl" in c for c in corrections)
    assert sv.rejected(store) == []

    f.write(series, tmp_path / "full")
    run(tmp_path / "full", tmp_path / "reference")
    full = single_volume(tmp_path / "reference")
    assert json.loads(row["shape"]) == json.loads(full["shape"]) == [128, 128, 6]
    np.testing.assert_allclose(json.loads(row["affine"]), json.loads(full["affine"]), atol=1e-5)
    data = np.asarray(nib.load(store / row["path"]).dataobj).astype(float)
    expected = np.asarray(nib.load(tmp_path / "reference" / full["path"]).dataobj).astype(float)
    # the missing slice is interpolated linearly along the normal; acquired slices are kept
    np.testing.assert_allclose(data[..., 3], (expected[..., 2] + expected[..., 4]) / 2, atol=1e-3)
    np.testing.assert_allclose(
        np.delete(data, 3, axis=2), np.delete(expected, 3, axis=2), atol=1e-3
    )


def test_two_images_at_one_position_are_rejected_as_duplicates(tmp_path):
    series = f.make_series(6)
    clash = copy.deepcopy(series[2])
    clash.SOPInstanceUID = generate_uid()
    clash.file_meta.MediaStorageSOPInstanceUID = clash.SOPInstanceUID
    clash.PixelData = (clash.pixel_array + 500).astype(clash.pixel_array.dtype).tobytes()
    f.write([*series, clash], tmp_path / "dup")
    store = tmp_path / "store"
    summary = run(tmp_path / "dup", store)
    assert (summary.written, dict(summary.rejected)) == (0, {"duplicate_slices": 1})
    row = only(sv.rejected(store), code="duplicate_slices")
    reason = json.loads((store / row["quarantine_path"] / "reason.json").read_text())
    assert reason["code"] == "duplicate_slices"


def test_the_same_file_twice_is_one_volume(tmp_path):
    series = f.make_series(6)
    paths = f.write(series, tmp_path / "twice")
    shutil.copy(paths[2], tmp_path / "twice" / "copy-of-one-slice.dcm")
    f.write(series, tmp_path / "once")
    summary = run(tmp_path / "twice", tmp_path / "s1")
    run(tmp_path / "once", tmp_path / "s2")
    assert (summary.written, sum(summary.rejected.values())) == (1, 0)
    twice, once = single_volume(tmp_path / "s1"), single_volume(tmp_path / "s2")
    assert (twice["volume_id"], twice["sha256"], twice["n_images"]) == (
        once["volume_id"],
        once["sha256"],
        6,
    )


def test_a_damaged_second_copy_of_a_slice_does_not_decide_by_its_name(tmp_path):
    series = f.make_series(6)
    for name in ("z-partial-copy.dcm", "a-partial-copy.dcm"):
        source = tmp_path / name / "src"
        paths = f.write(series, source, names=[f"m{k}.dcm" for k in range(6)])
        # the same SOP instance again, its pixels cut short
        (source / name).write_bytes(paths[2].read_bytes()[:-5000])
        summary = run(source, tmp_path / name / "store")
        assert (summary.written, dict(summary.rejected)) == (1, {}), name
        assert single_volume(tmp_path / name / "store")["n_images"] == 6


# -- grouping and archives ------------------------------------------------------------------


def test_two_series_in_one_folder_are_two_volumes(tmp_path):
    ct, mr = f.make_series(4), f.make_series(3, template=f.MR)
    names = [f"x{k:02d}.dcm" for k in range(7)]
    random.Random(1).shuffle(names)  # interleaved in one folder
    f.write([*ct, *mr], tmp_path / "both", names=names)
    summary = run(tmp_path / "both", tmp_path / "store")
    assert summary.written == 2
    assert sorted((r["modality"], r["n_images"]) for r in sv.volumes(tmp_path / "store")) == [
        ("CT", 4),
        ("MR", 3),
    ]


def _zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.dcm")):
            zf.write(path, f"export/{path.name}")
    return archive


def test_a_zipped_series_is_the_same_volume_as_the_folder(tmp_path):
    f.write(f.make_series(5), tmp_path / "series")
    _zip_folder(tmp_path / "series", tmp_path / "series.zip")
    run(tmp_path / "series", tmp_path / "from-folder")
    run(tmp_path / "series.zip", tmp_path / "from-zip")
    folder, archive = (
        single_volume(tmp_path / "from-folder"),
        single_volume(tmp_path / "from-zip"),
    )
    assert (archive["volume_id"], archive["sha256"]) == (folder["volume_id"], folder["sha256"])
    assert (folder["source_kind"], archive["source_kind"]) == ("dicom_files", "dicom_zip")


def test_a_series_present_as_folder_and_zip_is_written_once(tmp_path):
    f.write(f.make_series(5), tmp_path / "in" / "series")
    _zip_folder(tmp_path / "in" / "series", tmp_path / "in" / "series.zip")
    summary = run(tmp_path / "in", tmp_path / "store")
    assert (summary.written, sum(summary.rejected.values())) == (1, 0)
    assert single_volume(tmp_path / "store")["n_images"] == 5
