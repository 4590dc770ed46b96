"""Spec: every kind of image a hospital holds gets true geometry, or says it has none.

Multi-frame objects without functional groups take their geometry from the header (RT
dose: GridFrameOffsetVector; NM tomography: its detector's position and orientation);
an ultrasound cine stays one 2D image with frame times; localizers are 2D (or skipped on
request); an image without ImagePositionPatient/ImageOrientationPatient is stored 2D and
flagged ``geometry = none``, never given an invented identity affine; MONOCHROME1 is
inverted by the stored range, never by the image's content.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run, single_volume

RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
NM_IMAGE = "1.2.840.10008.5.1.4.1.1.20"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def dataset(sop_class: str, modality: str, pixels: np.ndarray, **attributes) -> Dataset:
    """A minimal valid DICOM object; ``pixels`` [frames, rows, cols] (or [rows, cols]) uint16."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.BurnedInAnnotation = "KINDS01", modality, "NO"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def save(ds: Dataset, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{ds.SOPInstanceUID[-8:]}.dcm", enforce_file_format=True)


def frames(n: int, rows: int = 16, cols: int = 12) -> np.ndarray:
    return np.stack([np.full((rows, cols), 100 * (k + 1), np.uint16) + np.arange(cols, dtype=np.uint16) for k in range(n)])


def test_rt_dose_frames_lie_at_their_grid_frame_offsets(tmp_path):
    ds = dataset(RT_DOSE, "RTDOSE", frames(5), ImagePositionPatient=[-10, -20, 30], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                 PixelSpacing=[2.5, 2.0], GridFrameOffsetVector=[0, 3, 6, 9, 12], DoseGridScaling=0.001)
    save(ds, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    assert (json.loads(row["shape"]), row["geometry"]) == ([12, 16, 5], "patient")
    affine = np.array(json.loads(row["affine"]))
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [2.0, 2.5, 3.0])
    world_last = affine @ [0, 0, 4, 1]
    assert world_last[2] == pytest.approx(42.0)  # IPP z + the last offset
    data = np.asarray(nib.load(tmp_path / "store" / row["path"]).dataobj)
    assert data[..., 4].min() == pytest.approx(0.5, abs=1e-6)  # 500 stored x DoseGridScaling (Gy)


def test_absolute_grid_frame_offsets_are_z_positions(tmp_path):
    ds = dataset(RT_DOSE, "RTDOSE", frames(3), ImagePositionPatient=[0, 0, 50], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                 PixelSpacing=[2, 2], GridFrameOffsetVector=[50, 52, 54], DoseGridScaling=1)
    save(ds, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    affine = np.array(json.loads(single_volume(tmp_path / "store")["affine"]))
    assert (affine @ [0, 0, 2, 1])[2] == pytest.approx(54.0)


def test_nm_tomography_takes_geometry_from_its_detector(tmp_path):
    detector = Dataset()
    detector.ImagePositionPatient = [0, 0, -40]
    detector.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds = dataset(NM_IMAGE, "NM", frames(4), DetectorInformationSequence=Sequence([detector]), PixelSpacing=[4, 4],
                 SpacingBetweenSlices=4, SliceThickness=4)
    save(ds, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    assert (json.loads(row["shape"]), row["geometry"]) == ([12, 16, 4], "patient")
    affine = np.array(json.loads(row["affine"]))
    assert (affine @ [0, 0, 3, 1])[2] == pytest.approx(-28.0)


def test_an_ultrasound_cine_is_one_2d_image_with_frame_times(tmp_path):
    ds = dataset(US_MULTIFRAME, "US", frames(6), FrameTime=40.0)
    save(ds, tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path / "store")
    assert summary.written == 1
    row = single_volume(tmp_path / "store")
    assert (row["geometry"], json.loads(row["shape"])) == ("none", [12, 16, 1, 6])
    assert [fr["time_s"] for fr in json.loads(row["frames"])] == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2])
    assert "no_pixel_spacing:1mm" in json.loads(row["corrections"])


def test_an_image_without_position_is_stored_2d_and_says_so(tmp_path):
    base = f.read_template(f.MR)
    del base.ImagePositionPatient
    base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    f.write([base], tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    assert (row["ndim"], row["geometry"], row["axcodes"]) == (2, "none", "2D")
    assert np.allclose(np.diag(np.array(json.loads(row["affine"])))[:2], [float(v) for v in base.PixelSpacing][::-1])


def test_localizers_are_2d_projections_or_skipped_on_request(tmp_path):
    series = f.make_series(3)
    for ds in series:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    f.write(series, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    rows = sv.volumes(tmp_path / "store")
    assert len(rows) == 3 and {(r["ndim"], r["geometry"]) for r in rows} == {(2, "projection")}
    summary = run(tmp_path / "in", tmp_path / "skipped", skip_localizers=True)
    assert (summary.written, dict(summary.rejected)) == (0, {"localizer_skipped": 3})


@pytest.mark.parametrize("content", [0, 1])
def test_monochrome1_is_inverted_by_the_stored_range_not_the_content(tmp_path, content):
    """Two images with different content: a stored value maps to (0 + 4095) - value in both."""
    pixels = np.array([[0, 100, 4095], [200, 300, 1000 + 2000 * content]], np.uint16)
    ds = dataset(DX_IMAGE, "DX", pixels, PhotometricInterpretation="MONOCHROME1", ImagerPixelSpacing=[0.2, 0.2])
    save(ds, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    row = single_volume(tmp_path / "store")
    data = np.asarray(nib.load(tmp_path / "store" / row["path"]).dataobj).astype(int)
    np.testing.assert_array_equal(data, 4095 - pixels.T.astype(int))
