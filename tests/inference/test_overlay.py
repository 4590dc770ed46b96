"""The overlay PNG says where it is: edge letters that match what is drawn, slice positions,
structure volumes in the legend and the caller's footer."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medssl.inference.overlay import EDGE_LETTERS, _display, _views, structure_volumes_ml, write_overlay
from medssl.io.volume import Volume


def ras_volume(shape=(20, 16, 12), spacing=(2.0, 2.0, 3.0)) -> Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-20.0, -16.0, 40.0)
    return Volume(np.zeros(shape, dtype=np.float32), affine)


def test_each_edge_letter_names_the_side_its_anatomy_is_drawn_on():
    volume = ras_volume()
    hot = {"R": (19, 8, 6), "L": (0, 8, 6), "A": (10, 15, 6), "P": (10, 0, 6), "S": (10, 8, 11), "I": (10, 8, 0)}
    for view, (title, index, _) in zip(("axial", "coronal", "sagittal"), _views(volume, (10, 8, 6))):
        assert title.startswith(view)
        left, right, top, bottom = EDGE_LETTERS[view]
        for letter, where in ((left, "left"), (right, "right"), (top, "top"), (bottom, "bottom")):
            array = np.zeros(volume.array.shape, dtype=np.float32)
            array[hot[letter]] = 1.0
            screen = _display(array[index])
            row, col = np.argwhere(screen == 1.0)[0]
            rows, cols = screen.shape
            assert {"left": col == 0, "right": col == cols - 1, "top": row == 0, "bottom": row == rows - 1}[where], (view, letter)


def test_titles_give_the_slice_number_and_its_world_position():
    titles = [t for t, _, _ in _views(ras_volume(), (10, 8, 6))]
    # voxel (10, 8, 6) lies at RAS (0, 0, 58) mm with this affine
    assert titles == ["axial 7/12 · S 58.0 mm", "coronal 9/16 · A 0.0 mm", "sagittal 11/20 · R 0.0 mm"]


def test_structure_volumes_are_voxel_counts_times_the_voxel_volume():
    labels = np.zeros((20, 16, 12), dtype=np.uint8)
    labels[:5, :4, :2] = 3  # 40 voxels of 12 mm^3
    labels[0, 0, 0] = 1
    assert structure_volumes_ml(labels, ras_volume().affine) == {1: 0.012, 3: 39 * 0.012}


def test_the_overlay_is_written_with_a_legend_and_footer(tmp_path):
    volume = ras_volume()
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[8:14, 6:10, 4:8] = 2
    path = write_overlay(tmp_path / "o.png", volume, labels, {2: "liver"}, [], "CT", footer="model m · input digest 0123")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 300 and image.shape[1] > 900
    bare = write_overlay(tmp_path / "b.png", volume, labels, {2: "liver"}, [], "CT")
    assert not np.array_equal(np.asarray(Image.open(bare).convert("RGB")), image)  # the footer is drawn
