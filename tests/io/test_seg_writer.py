"""DICOM SEG writer: a RAS+ label map goes back onto the source slices, exactly.

The source series are phantom CT stacks in several orientations; the label map lives on the
grid medssl's own reader builds from them (read_stack), so the test checks the writer
against the reader, and the read-back geometry against the source files' own headers.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medssl.io.seg_writer import MEDSSL_MANUFACTURER, source_grid, write_dicom_seg
from tests.io.geometry_reference import medssl_volumes
from tools.phantom import make_ct_phantom, write_ct_series

ORIENTATIONS = {
    "axial": "axial",
    "coronal": "coronal",
    "sagittal": "sagittal",
    "oblique": (0.9, 0.1, 0.0, -0.1, 0.2, -0.97),
}
NAMES = {1: "soft tissue", 2: "bone", 7: "never present"}


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom((24, 20, 12), (4.0, 4.0, 5.0), seed=3, n_lesions=1)


def _series(phantom, folder: Path, **kwargs):
    paths = write_ct_series(phantom, folder, **kwargs)
    volume = medssl_volumes(folder)[0]
    datasets = [pydicom.dcmread(p) for p in paths]
    labels = (volume.array > 50).astype(np.uint8) + (volume.array > 300).astype(np.uint8)
    return volume, datasets, labels


def _mask_from_seg(seg: Dataset, affine: np.ndarray, shape, value_of_segment) -> np.ndarray:
    """Rebuild the RAS label map from the SEG's own per-frame plane positions (test-side code)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    row, col = iop[:3], iop[3:]
    inverse = np.linalg.inv(affine)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out = np.zeros(shape, dtype=np.int64)
    rr, cc = np.meshgrid(np.arange(seg.Rows), np.arange(seg.Columns), indexing="ij")
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        lps = ipp + rr[..., None] * dy * col + cc[..., None] * dx * row
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ inverse[:3, :3].T + inverse[:3, 3]
        np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-3)  # frames lie on the grid
        i, j, k = np.rint(ijk[pixels[frame] > 0]).astype(int).T
        assert not np.any(out[i, j, k]), "two segments claim one voxel"
        out[i, j, k] = value_of_segment[number]
    return out


@pytest.mark.parametrize("orientation", list(ORIENTATIONS), ids=list(ORIENTATIONS))
def test_round_trip_geometry_and_references(phantom, tmp_path, orientation):
    volume, datasets, labels = _series(
        phantom, tmp_path / "ct", orientation=ORIENTATIONS[orientation]
    )
    shuffled = datasets[::-1][1::2] + datasets[::-1][0::2]  # any order in, sorted inside
    out = write_dicom_seg(
        labels,
        shuffled,
        NAMES,
        tmp_path / "seg.dcm",
        algorithm_name="threshold",
        algorithm_version="0.1",
    )
    seg = hd.seg.segread(out)
    source = datasets[0]

    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["soft tissue", "bone"]
    mask = _mask_from_seg(seg, volume.affine, volume.array.shape, {1: 1, 2: 2})
    np.testing.assert_array_equal(mask, labels)

    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ref_series.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in datasets}
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for item in seg.PerFrameFunctionalGroupsSequence:
        src_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame_ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(
            frame_ipp, [float(v) for v in by_uid[src_uid].ImagePositionPatient], atol=1e-4
        )
    iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(
        [float(v) for v in iop], [float(v) for v in source.ImageOrientationPatient], atol=1e-6
    )

    # a derived object for the source study: same study and patient, new series and instance
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.Manufacturer == MEDSSL_MANUFACTURER
    assert seg.SeriesDescription.startswith(MEDSSL_MANUFACTURER)


def test_empty_frames_are_omitted(phantom, tmp_path):
    volume, datasets, _ = _series(phantom, tmp_path / "ct")
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[5:9, 4:8, 6] = 1  # one axial slice only
    seg = hd.seg.segread(
        write_dicom_seg(
            labels,
            datasets,
            {1: "lesion"},
            tmp_path / "s.dcm",
            algorithm_name="a",
            algorithm_version="1",
        )
    )
    assert int(seg.NumberOfFrames) == 1
    assert seg.pixel_array.sum() == 16


def test_missing_slices_keep_their_place(phantom, tmp_path):
    volume, datasets, labels = _series(phantom, tmp_path / "ct", missing_slices=[4])
    grid = source_grid(datasets)
    assert grid.shape == volume.array.shape  # the reader re-grids the gap; so does the writer
    np.testing.assert_allclose(grid.affine, volume.affine, atol=1e-4)
    seg = hd.seg.segread(
        write_dicom_seg(
            labels, datasets, NAMES, tmp_path / "s.dcm", algorithm_name="a", algorithm_version="1"
        )
    )
    mask = _mask_from_seg(seg, volume.affine, volume.array.shape, {1: 1, 2: 2})
    k_missing = 4  # axial, RAS+: k grows with the stacking order
    np.testing.assert_array_equal(np.delete(mask, k_missing, 2), np.delete(labels, k_missing, 2))
    assert not mask[:, :, k_missing].any()


def test_explicit_affine_for_another_grid(phantom, tmp_path):
    volume, datasets, labels = _series(phantom, tmp_path / "ct")
    coarse = labels[::2, ::2, :]  # the same world box at twice the in-plane spacing
    affine = volume.affine.copy()
    affine[:3, :2] *= 2
    seg = hd.seg.segread(
        write_dicom_seg(
            coarse,
            datasets,
            NAMES,
            tmp_path / "s.dcm",
            algorithm_name="a",
            algorithm_version="1",
            affine=affine,
        )
    )
    mask = _mask_from_seg(seg, volume.affine, volume.array.shape, {1: 1, 2: 2})
    np.testing.assert_array_equal(
        mask[::2, ::2, :], coarse
    )  # nearest voxel, every other pixel exact


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda lm, ds: (lm[:, :, 0], ds), "must be \\[X, Y, Z\\]"),
        (lambda lm, ds: (lm.astype(np.float32), ds), "must hold integers"),
        (lambda lm, ds: (lm[:-1], ds), "differs from the source grid"),
        (lambda lm, ds: (lm * 3, ds), "have no entry in structure_names"),
        (lambda lm, ds: (np.zeros_like(lm), ds), "holds no structure"),
        (lambda lm, ds: (lm.astype(np.int16) - 1, ds), "negative"),
        (lambda lm, ds: (lm, []), "source_datasets is empty"),
    ],
    ids=["2d", "float", "shape", "unnamed", "empty", "negative", "no-sources"],
)
def test_bad_input_raises(phantom, tmp_path, change, message):
    _, datasets, labels = _series(phantom, tmp_path / "ct")
    labels, datasets = change(labels, datasets)
    with pytest.raises(ValueError, match=message):
        write_dicom_seg(
            labels, datasets, NAMES, tmp_path / "s.dcm", algorithm_name="a", algorithm_version="1"
        )
    assert not (tmp_path / "s.dcm").exists()


def test_sources_from_two_series_or_duplicates_are_refused(phantom, tmp_path):
    _, datasets, labels = _series(phantom, tmp_path / "a")
    _, others, _ = _series(phantom, tmp_path / "b", series_number=2)
    with pytest.raises(ValueError, match="another series"):
        write_dicom_seg(
            labels,
            datasets[:3] + others[:1],
            NAMES,
            tmp_path / "s.dcm",
            algorithm_name="a",
            algorithm_version="1",
        )
    with pytest.raises(ValueError, match="two slices at one position"):
        source_grid(datasets + datasets[:1])


def test_highdicom_does_not_log_source_uids_at_info():
    import logging

    import medssl.io.seg_writer  # noqa: F401  (importing the writer quiets highdicom)

    assert not logging.getLogger("highdicom").isEnabledFor(logging.INFO)
