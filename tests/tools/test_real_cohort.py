"""tools/real_cohort.py on a small synthetic CT + mask: disjoint slabs, true world geometry."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import yaml

from tools.real_cohort import (
    downsample_image,
    downsample_labels,
    group_lut,
    slab_affine,
    slab_ranges,
    write_cohort,
)

STRUCTURES = "group,original_idx,structure,id\norgans,1,liver,5\norgans,2,lung_upper_lobe_left,10\nvertebrae,1,vertebrae_T1,43\nvertebrae,2,vertebrae_T2,42\n"
GROUPS = {"liver": ["liver"], "lung_left": ["lung_upper_lobe_left"], "vertebrae": ["vertebrae_*"]}


@pytest.fixture()
def source(tmp_path):
    """A 16 x 12 x 20 LAS volume whose voxels hold their own slice index (as HU) and a mask."""
    affine = np.array([[-0.7, 0, 0, 50.0], [0, 0.7, 0, -30.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]])
    image = np.broadcast_to(np.arange(20, dtype=np.int16) * 10, (16, 12, 20)).copy()
    mask = np.zeros((16, 12, 20), np.uint8)
    mask[:8, :, :] = 5  # liver in the first half of the first axis
    mask[8:, :6, :] = 10
    mask[8:, 6:, 10:] = 43
    mask[8:, 6:, :10] = 42
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    (tmp_path / "structures.csv").write_text(STRUCTURES)
    return tmp_path, affine


def test_slabs_are_disjoint_with_the_gap_between_them():
    ranges = slab_ranges(133, 7, 16, 3)
    assert len(ranges) == 7 and all(b - a == 16 for a, b in ranges)
    assert all(nxt[0] - prev[1] == 3 for prev, nxt in itertools.pairwise(ranges))
    assert ranges[0][0] >= 0 and ranges[-1][1] <= 133


def test_slabs_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="need 118 slices; the volume has 100"):
        slab_ranges(100, 7, 16, 1)
    with pytest.raises(ValueError, match="slabs 0"):
        slab_ranges(100, 0, 16, 1)


def test_block_mean_and_block_mode():
    image = np.arange(4 * 4 * 1, dtype=np.float32).reshape(4, 4, 1)
    # block means 2.5, 4.5, 10.5, 12.5 round half to even
    assert downsample_image(image, 2)[:, :, 0].tolist() == [[2, 4], [10, 12]]
    labels = np.zeros((4, 4, 1), np.uint8)
    labels[:2, :2, 0] = [[1, 1], [1, 2]]  # mode 1
    labels[2:, 2:, 0] = [[3, 3], [0, 0]]  # tie 0/3 -> the lower value
    assert downsample_labels(labels, 2)[:, :, 0].tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        downsample_labels(labels[..., 0], 2)


def test_groups_merge_structures_and_unknown_groups_are_refused():
    lut = group_lut(
        {"liver": 5, "vertebrae_T1": 43, "vertebrae_T2": 42},
        {"liver": ["liver"], "vertebrae": ["vertebrae_*"]},
    )
    assert lut[5] == 1 and lut[42] == lut[43] == 2 and lut[7] == 0
    with pytest.raises(ValueError, match="group heart"):
        group_lut({"liver": 5}, {"heart": ["heart"]})


def test_each_slab_sits_where_it_was_in_the_source(source):
    root, affine = source
    table = write_cohort(
        root / "ct.nii.gz",
        root / "mask.nii.gz",
        root / "structures.csv",
        root / "out",
        slabs=3,
        slab_slices=5,
        gap=2,
        factor=2,
        groups=GROUPS,
    )
    spec = yaml.safe_load(table.read_text())
    assert spec["structures"] == {1: "liver", 2: "lung_left", 3: "vertebrae"}
    assert len(spec["cases"]) == 3
    assert [c.get("split") for c in spec["cases"]] == [None, "val", None]  # validation between training slabs
    seen: set[int] = set()
    for case, (start, stop) in zip(spec["cases"], slab_ranges(20, 3, 5, 2)):
        img = nib.load(table.parent / case["image"])
        seg = nib.load(table.parent / case["mask"])
        assert img.shape == seg.shape == (8, 6, 5) and np.allclose(img.affine, seg.affine)
        assert np.allclose(img.affine, slab_affine(affine, start, 2))
        # voxel (i, j, k) of the slab is the centre of source voxels 2i..2i+1, 2j..2j+1, slice start+k
        for i, j, k in [(0, 0, 0), (7, 5, 4), (3, 2, 1)]:
            src = np.array([2 * i + 0.5, 2 * j + 0.5, start + k, 1.0])
            assert np.allclose(img.affine @ [i, j, k, 1.0], affine @ src)
        data = np.asarray(img.dataobj)
        slices = set((data[0, 0] // 10).tolist())  # image values = source slice index x 10
        assert slices == set(range(start, stop)) and not slices & seen
        seen |= slices
        labels = np.asarray(seg.dataobj)
        assert labels[:4].max() == labels[:4].min() == 1 and set(np.unique(labels[4:])) <= {2, 3}


def test_validation_slabs_must_exist_and_leave_one_to_train(source):
    root, _ = source
    args = (root / "ct.nii.gz", root / "mask.nii.gz", root / "structures.csv", root / "out")
    for bad, match in (([4], "1..3"), ([1, 2, 3], "must train")):
        with pytest.raises(ValueError, match=match):
            write_cohort(*args, slabs=3, slab_slices=5, gap=2, factor=2, groups=GROUPS, val_slabs=bad)
    table = write_cohort(*args, slabs=3, slab_slices=5, gap=2, factor=2, groups=GROUPS, val_slabs=[])
    assert all("split" not in c for c in yaml.safe_load(table.read_text())["cases"])
