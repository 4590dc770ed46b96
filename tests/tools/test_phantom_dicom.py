"""Phantom DICOM writers, checked with pydicom and nibabel only (no dcm2niix here)."""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from tests.tools.phantom_helpers import (
    folder_digest,
    phantom_at,
    pixel_world_ras,
    read_series,
    real_values,
)
from tools.phantom import (
    COMPRESSED_SYNTAXES,
    SUPPORTED_SYNTAXES,
    write_ct_series,
    write_enhanced_multiframe,
    write_mosaic,
    write_mr_series,
)
from tools.phantom.dicom_base import new_dataset, save, set_pixels
from tools.phantom.jpeg_lossless import encode_jpeg_lossless_sv1

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # nibabel marks its DICOM readers experimental
    from nibabel.nicom import csareader, dicomwrappers

OBLIQUE_IOP = (0.9659258, 0.0, -0.258819, 0.0, 0.9659258, 0.258819)


def _axial_reference(phantom) -> np.ndarray:
    """``[K, rows=J, cols=I]`` as an axial LPS slice shows the RAS+ array."""
    return np.transpose(phantom.image[::-1, ::-1, :], (2, 1, 0))


@pytest.fixture(scope="module")
def explicit_series(small_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("explicit")
    return write_ct_series(small_ct, out, transfer_syntax="ExplicitVRLittleEndian", seed=1)


@pytest.mark.parametrize("syntax", [uid.keyword for uid in SUPPORTED_SYNTAXES])
def test_every_transfer_syntax_reads_back_to_the_phantom_hu(
    small_ct, tmp_path, explicit_series, syntax
):
    paths = write_ct_series(small_ct, tmp_path, transfer_syntax=syntax, seed=1)
    datasets = read_series(paths)
    assert {ds.file_meta.TransferSyntaxUID.keyword for ds in datasets} == {syntax}
    hu = np.stack([real_values(ds) for ds in datasets])
    assert np.abs(hu - _axial_reference(small_ct)).max() <= 0.5 + 1e-3
    if UID(pydicom.uid.UID(datasets[0].file_meta.TransferSyntaxUID)) in COMPRESSED_SYNTAXES:
        assert datasets[0].LossyImageCompression == "00"
        native = read_series(explicit_series)
        for ds, ref in zip(datasets, native):
            np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)  # lossless, bit for bit


def test_axial_series_geometry_tags(small_ct, explicit_series):
    datasets = read_series(explicit_series)
    first, second = datasets[0], datasets[1]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [5.0, 5.0]
    assert float(first.SliceThickness) == 8.0 and float(first.SpacingBetweenSlices) == 8.0
    assert float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == 8.0
    # Pixel (0, 0) of the first slice is the voxel (I-1, J-1, 0): most Left, Posterior, Inferior.
    corner_ras = small_ct.voxel_to_world([small_ct.shape[0] - 1, small_ct.shape[1] - 1, 0])
    np.testing.assert_allclose(pixel_world_ras(first)[0, 0], corner_ras)
    assert first.Rows == small_ct.shape[1] and first.Columns == small_ct.shape[0]
    assert (
        first.RescaleIntercept == -1024
        and first.BitsStored == 12
        and first.PixelRepresentation == 0
    )


def test_files_are_traps_for_naive_readers(explicit_series):
    assert all(re.fullmatch(r"[0-9a-f]{16}", p.name) for p in explicit_series)
    numbers = [int(ds.InstanceNumber) for ds in read_series(explicit_series)]
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)


def test_instance_file_names_and_unshuffled_numbers(small_ct, tmp_path):
    paths = write_ct_series(small_ct, tmp_path, file_names="instance", shuffle=False)
    assert [p.name for p in paths] == [f"IM{n:05d}.dcm" for n in range(1, small_ct.shape[2] + 1)]
    assert [int(ds.InstanceNumber) for ds in read_series(paths)] == list(
        range(1, small_ct.shape[2] + 1)
    )


def test_same_seed_writes_identical_bytes(small_ct, tmp_path):
    for name in ("a", "b"):
        write_ct_series(small_ct, tmp_path / name / "ct", transfer_syntax="JPEGLosslessSV1", seed=4)
        write_enhanced_multiframe(small_ct, tmp_path / name / "mf.dcm", shuffle_frames=True, seed=4)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    write_ct_series(small_ct, tmp_path / "c", transfer_syntax="JPEGLosslessSV1", seed=5)
    assert set(folder_digest(tmp_path / "c")) != set(folder_digest(tmp_path / "a" / "ct"))


def test_uids_are_valid_and_shared_where_they_should_be(small_ct, tmp_path):
    one = read_series(write_ct_series(small_ct, tmp_path / "1", series_number=1))
    two = read_series(
        write_ct_series(small_ct, tmp_path / "2", series_number=2, orientation="coronal")
    )
    for ds in (one[0], two[0]):
        for uid in (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            ds.FrameOfReferenceUID,
        ):
            assert UID(uid).is_valid
    assert one[0].StudyInstanceUID == two[0].StudyInstanceUID
    assert one[0].FrameOfReferenceUID == two[0].FrameOfReferenceUID
    assert one[0].SeriesInstanceUID != two[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in one + two}) == len(one) + len(two)


def test_missing_and_duplicate_slices(small_ct, tmp_path):
    paths = write_ct_series(
        small_ct, tmp_path, missing_slices=(3, 4), duplicate_slices=(10, 10, 20)
    )
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len(datasets) == small_ct.shape[2] - 2 + 3
    z = [round(float(ds.ImagePositionPatient[2]), 3) for ds in datasets]
    step = small_ct.spacing[2]
    first_z = small_ct.voxel_to_world([0, 0, 0])[2]
    assert round(first_z + 3 * step, 3) not in z and round(first_z + 4 * step, 3) not in z
    assert (
        z.count(round(first_z + 10 * step, 3)) == 3 and z.count(round(first_z + 20 * step, 3)) == 2
    )
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    with pytest.raises(ValueError, match="missing_slices"):
        write_ct_series(small_ct, tmp_path / "bad", missing_slices=(999,))


def test_extra_attributes_signed_storage_and_errors(small_ct, small_mr, tmp_path):
    paths = write_ct_series(
        small_ct,
        tmp_path,
        signed=True,
        rescale_intercept=0.0,
        rescale_slope=0.5,
        extra={"InstitutionName": "Phantom Hospital", "ConvolutionKernel": "B30f"},
    )
    datasets = read_series(paths)
    assert (
        datasets[0].InstitutionName == "Phantom Hospital"
        and datasets[0].ConvolutionKernel == "B30f"
    )
    assert datasets[0].PixelRepresentation == 1 and datasets[0].pixel_array.dtype == np.int16
    hu = np.stack([real_values(ds) for ds in datasets])
    assert np.abs(hu - _axial_reference(small_ct)).max() <= 0.25 + 1e-3
    with pytest.raises(ValueError, match="NotAKeyword"):
        write_ct_series(small_ct, tmp_path / "x", extra={"NotAKeyword": 1})
    with pytest.raises(ValueError, match="transfer syntax"):
        write_ct_series(small_ct, tmp_path / "y", transfer_syntax="JPEGBaseline8Bit")
    with pytest.raises(ValueError, match="CT phantom"):
        write_ct_series(small_mr, tmp_path / "z")


@pytest.mark.parametrize(
    "geometry",
    [
        {"orientation": OBLIQUE_IOP},
        {"gantry_tilt_deg": 15.0},
        {"gantry_tilt_deg": -15.0},
        {"orientation": "coronal"},
        {"orientation": "sagittal"},
    ],
    ids=["oblique", "tilt+15", "tilt-15", "coronal", "sagittal"],
)
def test_every_pixel_shows_the_phantom_at_its_tagged_world_position(small_ct, tmp_path, geometry):
    paths = write_ct_series(small_ct, tmp_path, **geometry)
    for ds in read_series(paths):
        ras = pixel_world_ras(ds)
        assert np.abs(real_values(ds) - phantom_at(small_ct, ras)).max() <= 0.5 + 0.05
    if "gantry_tilt_deg" in geometry:
        assert float(ds.GantryDetectorTilt) == geometry["gantry_tilt_deg"]
        positions = np.array([ds.ImagePositionPatient for ds in read_series(paths)], dtype=float)
        assert np.ptp(positions[:, :2], axis=0).max() < 1e-6  # the table moves along z only


def test_oblique_grid_is_centred_on_the_phantom(small_ct, tmp_path):
    datasets = read_series(write_ct_series(small_ct, tmp_path, orientation=OBLIQUE_IOP))
    corners = [pixel_world_ras(datasets[0])[0, 0], pixel_world_ras(datasets[-1])[-1, -1]]
    np.testing.assert_allclose(np.mean(corners, axis=0), small_ct.center_world, atol=1e-4)
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    assert abs(np.dot(iop[:3], iop[3:])) < 1e-7


def test_mr_series_tags_and_values(small_mr, tmp_path):
    datasets = read_series(
        write_mr_series(small_mr, tmp_path, echo_time_ms=12.0, magnetic_field_strength_t=3.0)
    )
    ds = datasets[0]
    assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert (
        float(ds.EchoTime) == 12.0
        and float(ds.MagneticFieldStrength) == 3.0
        and float(ds.RepetitionTime) > 0
    )
    assert "RescaleIntercept" not in ds
    values = np.stack([d.pixel_array.astype(float) for d in datasets])
    assert np.abs(values - _axial_reference(small_mr)).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    ("fixture", "sop"),
    [("small_ct", "EnhancedCTImageStorage"), ("small_mr", "EnhancedMRImageStorage")],
)
def test_enhanced_multiframe_positions_and_values(request, tmp_path, fixture, sop):
    phantom = request.getfixturevalue(fixture)
    path = write_enhanced_multiframe(
        phantom, tmp_path / "mf.dcm", shuffle_frames=True, transfer_syntax="RLELossless"
    )
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID.keyword == sop and int(ds.NumberOfFrames) == phantom.shape[2]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    if fixture == "small_ct":
        transform = shared.PixelValueTransformationSequence[0]
        slope, intercept = float(transform.RescaleSlope), float(transform.RescaleIntercept)
    else:
        slope, intercept = 1.0, 0.0
    frames = ds.pixel_array.astype(float) * slope + intercept
    stack_positions = []
    for n, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = Dataset()
        plane.ImagePositionPatient = group.PlanePositionSequence[0].ImagePositionPatient
        plane.ImageOrientationPatient, plane.PixelSpacing = iop, spacing
        plane.Rows, plane.Columns = ds.Rows, ds.Columns
        assert np.abs(frames[n] - phantom_at(phantom, pixel_world_ras(plane))).max() <= 0.5 + 1e-3
        stack_positions.append(int(group.FrameContentSequence[0].InStackPositionNumber))
    assert sorted(stack_positions) == list(range(1, phantom.shape[2] + 1))
    assert stack_positions != sorted(stack_positions)  # frames really are shuffled


def test_mosaic_round_trips_through_nibabel(small_mr, tmp_path):
    path = write_mosaic(small_mr, tmp_path / "mosaic.dcm")
    ds = pydicom.dcmread(path)
    n = small_mr.shape[2]
    k = int(np.ceil(np.sqrt(n)))
    assert (
        "MOSAIC" in ds.ImageType
        and ds.Rows == k * small_mr.shape[1]
        and ds.Columns == k * small_mr.shape[0]
    )
    csa = csareader.get_csa_header(ds)
    assert csareader.get_n_mosaic(csa) == n and csareader.is_mosaic(csa)
    np.testing.assert_allclose(csareader.get_slice_normal(csa), [0, 0, 1])
    assert ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0A].value == n
    wrapper = dicomwrappers.wrapper_from_file(str(path))
    data = wrapper.get_data()
    assert data.shape == (small_mr.shape[1], small_mr.shape[0], n)
    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine
    img = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.float32), ras_affine))
    np.testing.assert_allclose(img.affine, small_mr.affine, atol=1e-4)
    assert np.abs(img.get_fdata() - small_mr.image).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    ("dtype", "precision", "values"),
    [
        (np.uint16, 16, [0, 65535, 0, 32768, 1, 65534]),
        (np.int16, 16, [-32768, 32767, 0, -1, 1, -1024]),
        (np.uint16, 12, [0, 4095, 2048, 0, 4095, 7]),
        (np.uint16, 10, [0, 1023, 1, 512, 1022, 3]),
    ],
)
def test_jpeg_lossless_encoder_round_trips_extremes(tmp_path, dtype, precision, values):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    high = min(info.max, (1 << precision) - 1) if info.min == 0 else info.max
    frame = rng.integers(info.min, high + 1, size=(37, 29)).astype(dtype)
    frame[0, : len(values)] = values
    frame[1:, 0] = frame[:-1, 0][::-1]  # large jumps down the first column too
    ds = new_dataset(
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.generate_uid(),
        pydicom.uid.JPEGLosslessSV1,
    )
    set_pixels(ds, frame, bits_stored=precision)
    back = pydicom.dcmread(save(ds, tmp_path / "j.dcm")).pixel_array
    np.testing.assert_array_equal(back, frame)
    with pytest.raises(ValueError):
        encode_jpeg_lossless_sv1(frame.astype(np.float32), precision)
