"""Swin building blocks: window partition, shifted-window mask, relative position index."""

from __future__ import annotations

import torch

from medssl.backbones.windows import (
    effective_window,
    relative_position_index,
    shifted_window_mask,
    window_merge,
    window_partition,
)


def test_partition_and_merge_are_inverse_in_2d_and_3d() -> None:
    for sizes, window in (((6, 8, 4), (3, 4, 2)), ((14, 7), (7, 7))):
        x = torch.randn(2, *sizes, 5)
        windows = window_partition(x, window)
        n = torch.Size(window).numel()
        assert windows.shape == (2 * torch.Size(sizes).numel() // n, n, 5)
        assert torch.equal(window_merge(windows, window, sizes), x)


def test_window_tokens_are_contiguous_blocks() -> None:
    x = torch.arange(4 * 4).view(1, 4, 4, 1)
    assert window_partition(x, (2, 2))[:, :, 0].tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]


def test_small_axes_get_one_unshifted_window() -> None:
    assert effective_window((12, 7, 3), (7, 7, 7)) == ((7, 7, 3), (3, 0, 0))


def test_shift_mask_separates_exactly_the_wrapped_regions() -> None:
    mask = shifted_window_mask((14,), (7,), (3,), torch.device("cpu"))
    assert mask.shape == (2, 7, 7)
    assert (mask[0] == 0).all(), "the first window holds no wrapped tokens"
    region = torch.tensor([0] * 4 + [1] * 3)  # last window: 4 original + 3 wrapped tokens
    expected = torch.where(region[:, None] == region[None, :], 0.0, -100.0)
    assert torch.equal(mask[1], expected)
    unshifted_axis = shifted_window_mask((14, 7), (7, 7), (3, 0), torch.device("cpu"))
    assert unshifted_axis.shape == (2, 49, 49) and (unshifted_axis[0] == 0).all()


def test_relative_position_index_depends_only_on_the_offset() -> None:
    index = relative_position_index((3, 3))
    assert index.shape == (9, 9) and index.max() == 5 * 5 - 1
    assert index[0, 0] == index[4, 4] == index[8, 8] == 12  # zero offset is the centre of the table
    assert index[0, 4] == index[4, 8]  # same (-1, -1) offset
    assert len(set(index.flatten().tolist())) == 25
