"""Spec: a DICOM SEG reads into a label volume in world space and lands on its series' grid.

The SEG is made by highdicom from a phantom series (empty frames omitted, as highdicom
does by default); ingest with the SEG as the case's mask must give back the phantom's
label map exactly, segment numbers as values and SegmentLabels as names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medssl.errors import IngestError
from medssl.io.dicom_seg import is_seg, read_seg
from medssl.store import labels as L
from tests.store.test_labels_fixtures import (
    label_rejections,
    phantom,
    run,
    seg_frames,
    write_seg,
    write_table,
)
from tools.phantom import write_ct_series

SEGMENTS = [(6, "liver"), (8, "kidney_right"), (101, "lesion")]
REAL_SEG = Path(__file__).resolve().parents[2] / "data" / "real" / "pydicom-data" / "liver.dcm"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    ph = phantom(seed=1, n_lesions=1)
    folder = tmp_path_factory.mktemp("seg")
    paths = write_ct_series(ph, folder / "series", seed=1)
    return ph, folder, paths


def expected(ph) -> np.ndarray:
    out = np.zeros(ph.shape, np.uint8)
    for number, (value, _) in enumerate(SEGMENTS, start=1):
        out[ph.labels == value] = number
    return out


@pytest.mark.parametrize("fractional", [False, True])
def test_seg_roundtrip_recovers_the_phantom_mask(series, tmp_path, fractional):
    ph, folder, paths = series
    frames = seg_frames(ph, [v for v, _ in SEGMENTS])
    seg = write_seg(paths, frames, [n for _, n in SEGMENTS], folder / f"masks/seg-{fractional}.dcm", fractional=fractional)
    table = write_table(folder / f"t-{fractional}.yaml", [{"image": "series", "mask": f"masks/seg-{fractional}.dcm"}])
    store = tmp_path / "store"
    summary = run(store, table)
    assert summary.written == 1 and summary.labels_written == 1, label_rejections(store)
    (record,) = L.read_labels(store).values()
    assert np.array_equal(L.read_label_map(store, record), expected(ph))
    assert record.structures == {n: name for n, (_, name) in enumerate(SEGMENTS, start=1)}
    assert is_seg(seg.read_bytes())


def test_read_seg_gives_world_geometry(series):
    ph, folder, paths = series
    frames = seg_frames(ph, [101])
    seg = read_seg(write_seg(paths, frames, ["lesion"], folder / "masks/one.dcm").read_bytes(), max_bytes=1 << 30)
    assert seg.segments == {1: "lesion"}
    vol = seg.volume
    assert np.allclose(vol.affine[:3, :3], ph.affine[:3, :3])  # RAS+, phantom spacing
    # the SEG holds only the lesion's slices: its first voxel sits on a phantom voxel centre
    ijk = np.linalg.solve(ph.affine, vol.affine[:, 3])[:3]
    assert np.allclose(ijk, np.round(ijk), atol=1e-4)
    assert int(vol.array.sum()) == int((ph.labels == 101).sum())


def test_a_dicom_image_is_not_a_seg():
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert not is_seg(data)
    with pytest.raises(IngestError, match="not a Segmentation"):
        read_seg(data, max_bytes=1 << 30)


def test_seg_too_large_for_the_bound_is_refused(series):
    ph, folder, paths = series
    seg = write_seg(paths, seg_frames(ph, [6]), ["liver"], folder / "masks/bound.dcm")
    with pytest.raises(IngestError, match="exceeds the bound"):
        read_seg(seg.read_bytes(), max_bytes=100)


@pytest.mark.skipif(not REAL_SEG.is_file(), reason="data/real absent: run tools/fetch_real_data.sh (pydicom-data liver SEG)")
def test_real_liver_seg_reads():
    seg = read_seg(REAL_SEG.read_bytes(), max_bytes=1 << 30)
    assert seg.volume.array.ndim == 3 and seg.volume.array.any()
    assert set(np.unique(seg.volume.array)) <= {0, *seg.segments}
    assert seg.volume.axcodes == "RAS"
