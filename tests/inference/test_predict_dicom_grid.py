"""DICOM input: the label map on the series' own grid, the SEG on the source images.

The NIfTI of a DICOM prediction is laid out as the series is: (columns, rows, slices in stack
order, ascending along the slice normal), with the affine of that grid, as dcm2niix writes a
series before any reorientation. Each SEG frame references the source image at its own
position, and holds exactly that image's slice of the label map.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medssl.inference.inputs import read_input
from medssl.inference.predictor import PredictionRequest
from tests.inference.artifact_builders import BRIGHT_HU, ThresholdSegmenter, segmentation_artifact, small_plan

MARKER = (slice(28, 35), slice(4, 10), slice(9, 14))  # RAS+ voxels of the phantom: right, posterior, superior


@pytest.fixture(scope="module", params=["axial", "sagittal", "coronal"])
def series(request, tmp_path_factory):
    from tools.phantom import make_ct_phantom, write_ct_series

    root = tmp_path_factory.mktemp(f"dicom-{request.param}")
    phantom = make_ct_phantom((40, 44, 24), (4.0, 4.0, 4.0), seed=5, n_lesions=0)
    phantom.image[MARKER] = 1400.0
    paths = write_ct_series(phantom, root / "dicom", orientation=request.param)
    canonical = read_input([root / "dicom"]).volume
    artifact = segmentation_artifact(root / "artifact", plan=small_plan(target_spacing=canonical.spacing))
    predictor = ThresholdSegmenter(artifact, device="cpu")
    result = predictor.predict(PredictionRequest((root / "dicom",), frozenset({"json", "nifti", "seg"}), root))
    sources = [pydicom.dcmread(p) for p in paths]  # in stacking order
    return request.param, sources, result


def _stack(sources) -> tuple[np.ndarray, np.ndarray]:
    """HU ``[columns, rows, slices]`` and the grid's affine (voxel -> RAS mm) of the sources."""
    first, second = sources[0], sources[1]
    row, col = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    step = np.asarray(second.ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dx, col * dy, step, first.ImagePositionPatient
    hu = np.stack([ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in sources], axis=-1)
    return hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_label_map_is_on_the_series_own_grid_and_overlays_its_pixels(series):
    orientation, sources, result = series
    hu, affine = _stack(sources)
    out = nib.load(str(result.files["segmentation.nii.gz"]))
    assert out.shape == (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    assert np.allclose(out.affine, affine, atol=1e-3)
    labels = np.asarray(out.dataobj)
    marker = hu > BRIGHT_HU
    assert marker.sum() == 7 * 6 * 5, orientation
    assert np.array_equal(labels == 2, marker)
    assert result.summary["input"]["shape"] == list(out.shape)
    assert result.summary["input"]["axes"] == "".join(nib.aff2axcodes(affine))


def test_each_seg_frame_references_the_source_at_its_position_and_holds_its_slice(series):
    _orientation, sources, result = series
    labels = np.asarray(nib.load(str(result.files["segmentation.nii.gz"])).dataobj)
    seg = pydicom.dcmread(result.files["seg.dcm"])
    stack_index = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    referenced = {item.ReferencedSOPInstanceUID
                  for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(stack_index)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = set()
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = stack_index[uid]
        source = sources[k]
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        assert np.array_equal(frame.astype(bool), labels[:, :, k].T == 2)  # rows x columns
        seen.add(k)
    assert seen == {k for k in range(len(sources)) if (labels[:, :, k] == 2).any()}
