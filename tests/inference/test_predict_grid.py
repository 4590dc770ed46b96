"""Results on the input's own grid: label maps overlay the input array voxel for voxel.

One CT phantom, with a bright marker block off-centre so no flip or transpose goes unseen,
is written as NIfTI in RAS, PIR, LPS and an oblique orientation, and as an LPS NRRD: the same
world voxels in other array orders. Two predictors run on each: the test artifact (its
output, put back into RAS+ order, must equal the prediction on the RAS file), and the same
artifact's whole geometry path with the network replaced by a threshold on the
preprocessed image at the input's own spacing, whose label map must be exactly the marker
of its own input array, voxel for voxel.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

from medssl.inference.inputs import read_input
from medssl.inference.native_grid import RAS
from medssl.inference.predict import ArtifactPredictor
from medssl.inference.predictor import PredictionRequest
from tests.inference.artifact_builders import (
    BRIGHT_HU,
    ThresholdSegmenter,
    segmentation_artifact,
    small_plan,
)

SHAPE, SPACING = (44, 52, 18), (4.0, 4.0, 6.0)
NIFTI = frozenset({"json", "nifti"})
MARKER_HU = 1400  # the phantom stays below 700 HU; BRIGHT_HU (1000) separates the marker
MARKER = (slice(30, 37), slice(4, 10), slice(11, 16))  # RAS+ voxels: right, posterior, superior


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(4)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def reorder(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """A RAS+ array and affine -> the same voxels in ``axcodes`` array order."""
    transform = ornt.ornt_transform(RAS, ornt.axcodes2ornt(tuple(axcodes)))
    return (np.ascontiguousarray(ornt.apply_orientation(array, transform)),
            affine @ ornt.inv_ornt_aff(transform, array.shape))


def write_nifti(path, array, affine, qform_code=1, sform_code=1):
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return path


def write_nrrd(path, array, affine_ras):
    import nrrd

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
              "space origin": lps[:3, 3], "kinds": ["domain"] * 3, "encoding": "raw"}
    nrrd.write(str(path), array, header, index_order="F")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tools.phantom import make_ct_phantom

    root = tmp_path_factory.mktemp("grid")
    phantom = make_ct_phantom(SHAPE, SPACING, seed=3, n_lesions=0)
    ras = np.rint(phantom.image).astype(np.int16)
    ras[MARKER] = MARKER_HU
    affine = phantom.affine
    # the oblique file: PIR order, turned 20 degrees about two axes around the volume centre
    centre = affine @ np.array([*(np.array(SHAPE) - 1) / 2, 1.0])
    move = np.eye(4)
    move[:3, 3] = centre[:3]
    turn = move @ _rotation(2, 20) @ _rotation(0, 15) @ np.linalg.inv(move)
    files = {"ras": write_nifti(root / "ras.nii.gz", ras, affine)}
    for name, codes, extra in (("pir", "PIR", np.eye(4)), ("lps", "LPS", np.eye(4)),
                               ("oblique", "PIR", turn)):
        array, native = reorder(ras, affine, codes)
        files[name] = write_nifti(root / f"{name}.nii.gz", array, extra @ native, 1,
                                  2 if name == "oblique" else 1)
    array, native = reorder(ras, affine, "LPS")
    files["nrrd"] = write_nrrd(root / "lps.nrrd", array, native)
    predictor = ArtifactPredictor(segmentation_artifact(root / "artifact"), device="cpu")
    threshold = ThresholdSegmenter(
        segmentation_artifact(root / "native-spacing", plan=small_plan(target_spacing=SPACING)), device="cpu")
    results = {}
    for name, path in files.items():
        for label, model in (("model", predictor), ("threshold", threshold)):
            out = root / f"{label}-{name}"
            out.mkdir()
            results[name, label] = (path, model.predict(PredictionRequest((path,), NIFTI, out)))
    return results


def _input_grid(path):
    if path.suffix == ".nrrd":
        import nrrd

        array, header = nrrd.read(str(path), index_order="F")
        lps = np.eye(4)
        lps[:3, :3], lps[:3, 3] = np.asarray(header["space directions"]).T, header["space origin"]
        return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, None
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine, image.header


@pytest.mark.parametrize("name", ["ras", "pir", "lps", "oblique", "nrrd"])
def test_label_map_has_the_inputs_shape_affine_and_header_geometry(run, name):
    path, result = run[name, "model"]
    array, affine, header = _input_grid(path)
    out = nib.load(str(result.files["segmentation.nii.gz"]))
    assert out.shape == array.shape
    assert np.allclose(out.affine, affine, atol=1e-5)
    if header is not None:  # qform and sform as the input's, codes included
        assert int(out.header["qform_code"]) == int(header["qform_code"])
        assert int(out.header["sform_code"]) == int(header["sform_code"])
        assert np.allclose(out.header.get_qform(), header.get_qform(), atol=1e-5)
        assert np.allclose(out.header.get_sform(), header.get_sform(), atol=1e-5)
    summary = result.summary["input"]
    assert summary["shape"] == list(array.shape) and summary["output_grid"] == "input"
    assert summary["axes"] == "".join(nib.aff2axcodes(affine))


@pytest.mark.parametrize("name", ["ras", "pir", "lps", "oblique", "nrrd"])
def test_label_map_overlays_the_input_array_voxel_for_voxel(run, name):
    """Thresholded on the model grid, written on the input's: exactly the input's marker."""
    path, result = run[name, "threshold"]
    array, _, _ = _input_grid(path)
    labels = np.asarray(nib.load(str(result.files["segmentation.nii.gz"])).dataobj)
    marker = array > BRIGHT_HU
    assert marker.sum() == 7 * 6 * 5
    assert np.array_equal(labels == 2, marker) and set(np.unique(labels)) == {0, 2}


@pytest.mark.parametrize("name", ["pir", "lps", "oblique", "nrrd"])
def test_label_map_back_in_ras_order_is_the_ras_prediction(run, name):
    path, result = run[name, "model"]
    expected = np.asarray(nib.load(str(run["ras", "model"][1].files["segmentation.nii.gz"])).dataobj)
    native = read_input([path]).native
    labels = np.asarray(nib.load(str(result.files["segmentation.nii.gz"])).dataobj)
    assert np.array_equal(native.to_canonical(labels), expected)
    ras = run["ras", "model"][1].summary["segmentation"]["seg"]
    assert result.summary["segmentation"]["seg"]["structures"] == ras["structures"]


def test_pir_input_keeps_its_non_canonical_shape(run):
    path, result = run["pir", "model"]
    assert nib.load(str(path)).shape == (SHAPE[1], SHAPE[2], SHAPE[0])  # (52, 18, 44)
    assert nib.load(str(result.files["segmentation.nii.gz"])).shape == (52, 18, 44)


def test_output_bytes_are_deterministic(run, tmp_path):
    path, result = run["oblique", "model"]
    predictor = ArtifactPredictor(segmentation_artifact(tmp_path / "artifact"), device="cpu")
    again = predictor.predict(PredictionRequest((path,), NIFTI, tmp_path))
    first = result.files["segmentation.nii.gz"].read_bytes()
    assert again.files["segmentation.nii.gz"].read_bytes() == first
    assert gzip.decompress(first)[:4] == (348).to_bytes(4, "little")


def test_a_grid_that_does_not_come_back_exactly_is_not_used(run):
    from medssl.inference.native_grid import native_grid

    path, _ = run["pir", "model"]
    inp = read_input([path])
    image = nib.load(str(path))
    assert native_grid(inp.volume, image.affine, native_shape=image.shape) is not None
    shifted = image.affine.copy()
    shifted[0, 3] += 0.5  # half a millimetre off: another grid
    assert native_grid(inp.volume, shifted, native_shape=image.shape) is None
    assert native_grid(inp.volume, image.affine, native_shape=image.shape[::-1]) is None


def test_without_the_inputs_grid_the_canonical_grid_is_written_and_said(run, tmp_path, monkeypatch):
    import medssl.inference.inputs as inputs

    monkeypatch.setattr(inputs, "nifti_native_grid", lambda data, volume: None)
    path, _ = run["pir", "model"]
    predictor = ArtifactPredictor(segmentation_artifact(tmp_path / "artifact"), device="cpu")
    result = predictor.predict(PredictionRequest((path,), NIFTI, tmp_path))
    out = nib.load(str(result.files["segmentation.nii.gz"]))
    canonical = read_input([path]).volume
    assert out.shape == canonical.array.shape and np.allclose(out.affine, canonical.affine)
    assert result.summary["input"]["output_grid"] == "ras_canonical"
    assert any("RAS+ canonical grid" in note for note in result.summary["notes"])
