"""The body box of cached volumes and the crops' normalised body coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.data.crops import CropCollate, CropDataset, body_coordinates
from medssl.preprocess.volume_cache import CachedVolume, body_box, build_cache
from medssl.store.fingerprint import fingerprint
from medssl.store.plan import make_plan
from medssl.store.selection import foreground_mask
from tests.data.synthetic_store import Spec, write_store

SHAPE = (40, 36, 24)


def boxed_body(table: bool = False, noise: bool = False) -> np.ndarray:
    """Air with a body of HU 40 at voxels [8, 30) x [6, 28) x [0, 24); optionally a table and noise."""
    array = np.full(SHAPE, -1000.0, np.float32)
    array[8:30, 6:28, :] = 40.0
    if table:
        array[2:38, 31:33, :] = 300.0  # a bright table below the body, not touching it
    if noise:
        array[0, 0, 0] = array[39, 35, 0] = 500.0  # stray bright voxels at the corners
    return array


def test_body_box_of_a_phantom_with_a_known_extent():
    assert body_box(foreground_mask(boxed_body(), "CT")) == (8.0, 6.0, 0.0, 30.0, 28.0, 24.0)


def test_a_table_and_noise_do_not_stretch_the_box():
    box = body_box(foreground_mask(boxed_body(table=True, noise=True), "CT"))
    assert box == pytest.approx((8.0, 6.0, 0.0, 30.0, 28.0, 24.0), abs=0.5)


def test_an_empty_mask_gives_the_whole_array_and_2d_is_rejected():
    assert body_box(np.zeros(SHAPE, bool)) == (0.0, 0.0, 0.0, *map(float, SHAPE))
    with pytest.raises(ValueError, match="3D"):
        body_box(np.zeros((4, 4), bool))


def test_body_coordinates_are_zero_to_one_inside_the_box():
    box = (8.0, 6.0, 0.0, 30.0, 28.0, 24.0)
    boxes = torch.tensor([[8, 6, 0, 8, 6, 0], [30, 28, 24, 30, 28, 24], [9, 7, 3, 29, 27, 4]])
    body = body_coordinates(boxes, box)
    assert body[0].tolist() == [0.0, 0.0, 0.0] and body[1].tolist() == [1.0, 1.0, 1.0]
    assert body[2].tolist() == pytest.approx([0.5, 0.5, 3.5 / 24])
    with pytest.raises(ValueError, match="boxes"):
        body_coordinates(boxes[:, :3], box)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    specs = [
        Spec(SHAPE, (1.5, 1.5, 3.0), "CT", "p0", array=boxed_body(table=True)),
        Spec(SHAPE, (3.0, 3.0, 3.0), "CT", "p1", array=boxed_body()),  # resampled to 1.5 mm
    ]
    store = write_store(tmp_path_factory.mktemp("body") / "store", specs)
    plan = make_plan(fingerprint(store))
    return build_cache(store, plan, progress=False)


def test_a_volume_without_a_body_box_counts_as_all_body():
    row = {"volume_id": "v", "file": "v.npy", "shape": [40, 30, 20], "spacing": [1, 1, 1], "modality": "CT",
           "patient": None, "study": None, "pad_value": 0.0, "sha256": "0" * 64}  # fmt: skip
    volume = CachedVolume.from_dict(row)
    assert volume.body_box == (0.0, 0.0, 0.0, 40.0, 30.0, 20.0)
    centre = body_coordinates(torch.tensor([[10, 10, 5, 30, 20, 15]]), volume.body_box)
    assert torch.allclose(centre, torch.tensor([[0.5, 0.5, 0.5]]))  # normalised, not voxels


def test_the_cache_stores_the_body_box_in_cached_voxels(index):
    # the box is found on the store grid (1.5 and 3.0 mm in-plane) and scaled to the cache's
    for volume, store_spacing in zip(index.volumes, (1.5, 3.0)):
        scale = [sp / c for sp, c in zip((store_spacing, store_spacing, 3.0), volume.spacing)]
        expected = [b * f for b, f in zip((8.0, 6.0, 0.0, 30.0, 28.0, 24.0), scale * 2)]
        assert volume.body_box == pytest.approx(expected, abs=0.5)
        assert all(hi <= s + 0.5 for hi, s in zip(volume.body_box[3:], volume.shape))


@pytest.mark.parametrize("slice_axis", [None, 2])
def test_every_crop_batch_carries_body_coordinates_of_its_centre(index, slice_axis):
    size = (12, 12, 8) if slice_axis is None else (12, 12)
    dataset = CropDataset(index, [0, 1], size, crops_per_volume=3, slice_axis=slice_axis)
    batch = CropCollate()([dataset[0], dataset[1]])
    assert batch["body"].shape == (6, 3) and batch["body"].dtype == torch.float32
    for box, v, body in zip(batch["box"], batch["volume"].tolist(), batch["body"]):
        lo, hi = torch.tensor(index.volumes[v].body_box).split(3)
        centre = (box[:3] + box[3:]).float() / 2
        torch.testing.assert_close(body, (centre - lo) / (hi - lo))
    assert ((batch["body"] > -0.5) & (batch["body"] < 1.5)).all()
