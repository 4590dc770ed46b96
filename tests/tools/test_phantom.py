"""The phantom volumes: determinism, conventions, anatomy, labels, lesions, non-DICOM files."""

from __future__ import annotations

import json
import time

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from tools.phantom import (
    LESION_KINDS,
    Phantom,
    lesion_boxes_2d,
    make_ct_phantom,
    make_mr_phantom,
    write_nifti,
    write_nrrd,
    write_radiograph,
)
from tools.phantom.__main__ import main as phantom_cli


def _label(ph: Phantom, name: str) -> int:
    return next(v for v, n in ph.label_names.items() if n == name)


def _centroid_world(ph: Phantom, name: str) -> np.ndarray:
    return ph.voxel_to_world(np.argwhere(ph.labels == _label(ph, name)).mean(axis=0))


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a = make_ct_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=7)
    b = make_ct_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=7)
    c = make_ct_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.lesions == b.lesions and a.label_names == b.label_names
    assert not np.array_equal(a.image, c.image)
    assert [les.center_voxel for les in a.lesions] != [les.center_voxel for les in c.lesions]


def test_default_ct_phantom_is_fast_and_typed():
    start = time.perf_counter()
    ph = make_ct_phantom((128, 128, 64))
    assert time.perf_counter() - start < 1.0
    assert ph.image.shape == ph.labels.shape == (128, 128, 64)
    assert ph.image.dtype == np.float32 and ph.labels.dtype == np.uint8
    assert ph.modality == "CT" and -1024 <= ph.image.min() and ph.image.max() <= 3071


def test_affine_is_ras_plus_centred_on_center_mm(small_ct):
    assert nib.aff2axcodes(small_ct.affine) == ("R", "A", "S")
    assert small_ct.spacing == (5.0, 5.0, 8.0)
    np.testing.assert_allclose(small_ct.center_world, (10.0, -20.0, 30.0))
    ijk = np.array([[0, 0, 0], [63, 10, 31]])
    np.testing.assert_allclose(
        small_ct.world_to_voxel(small_ct.voxel_to_world(ijk)), ijk, atol=1e-9
    )
    ph = make_ct_phantom((32, 32, 16), (8.0, 8.0, 16.0), center_mm=(0.0, 0.0, 0.0), n_lesions=0)
    np.testing.assert_allclose(
        ph.affine[:3, 3], -np.array([8.0, 8.0, 16.0]) * (np.array([32, 32, 16]) - 1) / 2
    )


def test_anatomy_lies_on_the_right_sides(small_ct):
    """RAS+: +x is the patient's Right, +y Anterior, +z Superior."""
    body = _centroid_world(small_ct, "body")
    assert _centroid_world(small_ct, "liver")[0] > body[0] + 30  # liver: patient's right
    assert _centroid_world(small_ct, "spleen")[0] < body[0] - 30  # spleen: left
    assert _centroid_world(small_ct, "aorta")[0] < body[0]  # aorta: left of midline
    assert _centroid_world(small_ct, "vertebrae")[1] < body[1] - 20  # spine: posterior
    assert _centroid_world(small_ct, "heart")[1] > body[1]  # heart: anterior
    assert _centroid_world(small_ct, "lung_right")[0] > _centroid_world(small_ct, "lung_left")[0]
    assert (
        _centroid_world(small_ct, "lung_right")[2] > _centroid_world(small_ct, "liver")[2] + 40
    )  # lungs superior
    assert _centroid_world(small_ct, "kidney_left")[2] < _centroid_world(small_ct, "liver")[2]


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("background", -1100, -900),
        ("body", -150, -50),
        ("muscle", 20, 70),
        ("lung_right", -900, -750),
        ("lung_left", -900, -750),
        ("liver", 90, 130),  # portal-venous phase, as the enhanced aorta
        ("spleen", 95, 135),
        ("kidney_right", 140, 190),
        ("aorta", 120, 260),
        ("vertebrae", 200, 900),
    ],
)
def test_labels_align_with_ct_intensities(small_ct, name, low, high):
    assert low < np.median(small_ct.image[small_ct.labels == _label(small_ct, name)]) < high


def test_label_names_cover_every_value(small_ct):
    assert set(np.unique(small_ct.labels).tolist()) == set(small_ct.label_names)


def test_lesions_sit_inside_their_host_inside_the_body(small_ct):
    body = small_ct.labels > 0
    assert [les.kind for les in small_ct.lesions] == list(LESION_KINDS)[:5]
    for les in small_ct.lesions:
        mask = small_ct.labels == les.label
        assert mask.sum() > 0 and small_ct.label_names[les.label].endswith(les.kind)
        i0, j0, k0, i1, j1, k1 = les.bbox
        assert mask[i0:i1, j0:j1, k0:k1].sum() == mask.sum()
        assert np.all(ndimage.binary_dilation(mask) <= body), f"{les.kind} touches the outside"
        ring = ndimage.binary_dilation(mask) & ~mask
        assert np.mean(small_ct.labels[ring] == _label(small_ct, les.host)) > 0.5
        np.testing.assert_allclose(les.center_world, small_ct.voxel_to_world(les.center_voxel))
        assert small_ct.labels[tuple(int(v) for v in les.center_voxel)] == les.label


def test_lesion_intensities_follow_their_kind():
    ph = make_ct_phantom((96, 96, 48), (4.0, 4.0, 5.0), seed=11, n_lesions=5, noise_sd=0.0)
    median = {les.kind: float(np.median(ph.image[ph.labels == les.label])) for les in ph.lesions}
    liver = float(np.median(ph.image[ph.labels == _label(ph, "liver")]))
    calcified = next(les for les in ph.lesions if les.kind == "calcified")
    assert (
        ph.image[ph.labels == calcified.label].max() > 400
    )  # small: partial volume lowers the median
    assert -800 < median["ground_glass"] < -300
    assert median["hypodense"] < liver - 20
    assert median["solid_nodule"] > -300  # far denser than lung
    assert -40 < median["cyst"] < 30


def test_variation_gives_each_body_its_own_size_and_place_and_zero_keeps_the_reference():
    args = {"shape": (48, 48, 24), "spacing": (6.0, 6.0, 10.0), "n_lesions": 0}
    reference = make_ct_phantom(**args, seed=1)
    assert np.array_equal(make_ct_phantom(**args, seed=1, variation=0.0).labels, reference.labels)
    liver = _label(reference, "liver")
    assert np.array_equal(make_ct_phantom(**args, seed=2).labels == liver, reference.labels == liver)  # one anatomy, any seed
    varied = [make_ct_phantom(**args, seed=s, variation=0.15) for s in (1, 2, 3)]
    livers = [_centroid_world(p, "liver") for p in varied]
    volumes = [int((p.labels == _label(p, "liver")).sum()) for p in varied]
    assert max(np.linalg.norm(a - b) for a in livers for b in livers) > 5.0  # moved (mm)
    assert max(volumes) > 1.1 * min(volumes)  # resized
    for p, liver in zip(varied, livers):  # still a torso with its organs on their sides
        assert liver[0] > _centroid_world(p, "spleen")[0] and liver[0] > _centroid_world(p, "body")[0]


def test_mr_phantom_shares_anatomy_with_t1_contrast():
    ct = make_ct_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=5)
    mr = make_mr_phantom((48, 48, 24), (6.0, 6.0, 10.0), seed=5)
    assert np.array_equal(ct.labels, mr.labels) and mr.modality == "MR"
    assert mr.image.min() >= 0 and mr.image.dtype == np.float32

    def med(name: str) -> float:
        return float(np.median(mr.image[mr.labels == _label(mr, name)]))

    assert med("body") > med("muscle") > med("lung_right")  # fat bright, lung dark on T1
    assert med("liver") > med("spleen")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_lesions": -1},
        {"lesion_kinds": ["tumour"]},
        {"shape": (4, 64, 64)},
        {"spacing": (0.0, 1.0, 1.0)},
        {"variation": 0.5},
        {"variation": -0.1},
    ],
)
def test_bad_arguments_raise(kwargs):
    args = {"shape": (48, 48, 24), "spacing": (6.0, 6.0, 10.0)} | kwargs
    with pytest.raises(ValueError):
        make_ct_phantom(**args)


def test_nifti_round_trip_keeps_the_affine(tmp_path, small_ct):
    write_nifti(small_ct, tmp_path / "ct.nii.gz", labels_path=tmp_path / "labels.nii.gz")
    img, lab = nib.load(tmp_path / "ct.nii.gz"), nib.load(tmp_path / "labels.nii.gz")
    np.testing.assert_allclose(img.affine, small_ct.affine)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), small_ct.image)
    np.testing.assert_array_equal(np.asarray(lab.dataobj), small_ct.labels)


def test_nrrd_round_trip_in_lps(tmp_path, small_ct):
    write_nrrd(small_ct, tmp_path / "ct.nrrd", labels_path=tmp_path / "labels.nrrd")
    write_nrrd(small_ct, tmp_path / "again.nrrd")
    assert (tmp_path / "ct.nrrd").read_bytes() == (tmp_path / "again.nrrd").read_bytes()
    data, header = nrrd.read(str(tmp_path / "ct.nrrd"), index_order="F")
    labels, _ = nrrd.read(str(tmp_path / "labels.nrrd"), index_order="F")
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(data, small_ct.image)
    np.testing.assert_array_equal(labels, small_ct.labels)
    ijk = np.array([3.0, 40.0, 7.0])
    lps = header["space origin"] + ijk @ np.asarray(header["space directions"])
    np.testing.assert_allclose(lps * [-1, -1, 1], small_ct.voxel_to_world(ijk))


def test_radiograph_is_a_frontal_projection(tmp_path, small_ct):
    path = write_radiograph(tmp_path / "cxr.dcm", phantom=small_ct, modality="DX")
    ds = pydicom.dcmread(path)
    img = ds.pixel_array.astype(float)
    assert img.shape == (small_ct.shape[2], small_ct.shape[0])
    assert ds.Modality == "DX" and list(ds.PatientOrientation) == ["L", "F"]
    assert [float(v) for v in ds.PixelSpacing] == [small_ct.spacing[2], small_ct.spacing[0]]
    # Patient's right (high i) is on the image's left (low column); the liver makes the lower
    # right side of the patient denser than the lower left (the spleen is smaller).
    lower = img[img.shape[0] * 2 // 3 :]
    mid = img.shape[1] // 2
    assert lower[:, :mid].mean() > lower[:, mid:].mean()
    assert img[:4].mean() > 0  # the body spans the whole field of view
    for r0, c0, r1, c1 in lesion_boxes_2d(small_ct).values():
        assert 0 <= r0 < r1 <= img.shape[0] and 0 <= c0 < c1 <= img.shape[1]
    again = write_radiograph(tmp_path / "again.dcm", phantom=small_ct, modality="DX")
    assert path.read_bytes() == again.read_bytes()


def test_cli_writes_a_mixed_folder(tmp_path, capsys):
    code = phantom_cli(
        [
            "--out",
            str(tmp_path),
            "--kind",
            "ct",
            "--n-series",
            "4",
            "--seed",
            "2",
            "--shape",
            "48",
            "48",
            "24",
            "--spacing",
            "6",
            "6",
            "10",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "phantom_manifest.json").read_text())
    series = manifest["series"]
    assert len(series) == 4 and len({s["study_uid"] for s in series}) >= 2
    assert {"oblique", "compressed"} <= {s["recipe"] for s in series}
    for s in series:
        files = sorted((tmp_path / s["path"]).iterdir())
        assert len(files) == s["n_files"]
        ds = pydicom.dcmread(files[0])
        assert ds.file_meta.TransferSyntaxUID.keyword == s["transfer_syntax"]
        assert ds.StudyInstanceUID == s["study_uid"] and ds.PatientID == s["patient_id"]
    assert (tmp_path / "ground_truth" / f"{series[0]['patient_id']}_labels.nii.gz").exists()
    assert "4 series" in capsys.readouterr().out
