"""Sliding-window prediction agrees with MONAI's and keeps its promises on shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from torch import nn

from medssl.inference.sliding_window import (
    importance_map,
    sliding_window,
    sliding_window_by_slice,
    window_starts,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny windows: intra-op threads only add hand-offs (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_net(spatial_dims: int, out_channels: int = 3) -> nn.Module:
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    torch.manual_seed(0)
    return nn.Sequential(conv(2, 4, 3, padding=1), nn.Tanh(), conv(4, out_channels, 1)).eval()


def monai(net, image, roi, overlap, mode="gaussian", sigma_scale=0.125, sw_batch_size=3):
    with torch.inference_mode():
        return sliding_window_inference(
            image, roi, sw_batch_size, net, overlap=overlap, mode=mode, sigma_scale=sigma_scale
        )


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [
        ((1, 2, 21, 17, 13), (8, 8, 8), 0.5),  # 3D, no axis divisible by the step
        ((2, 2, 21, 17, 13), (8, 6, 5), 0.0),  # anisotropic roi, no overlap, batch of 2
        ((1, 2, 21, 17, 13), (8, 6, 5), 0.75),
        ((1, 2, 5, 7, 6), (8, 8, 8), 0.5),  # smaller than the roi on every axis
        ((1, 2, 20, 5, 12), (8, 8, 8), 0.5),  # smaller on one axis only
        ((1, 2, 16, 16, 16), (16, 16, 16), 0.5),  # one window exactly
        ((1, 2, 37, 29), (12, 10), 0.5),  # 2D
        ((2, 2, 7, 29), (12, 10), 0.75),  # 2D, padded on one axis
    ],
)
def test_matches_monai_gaussian(shape, roi, overlap) -> None:
    torch.manual_seed(1)
    image = torch.randn(shape)
    net = conv_net(len(roi))
    ours = sliding_window(net, image, roi, overlap=overlap, batch_size=4)
    reference = monai(net, image, roi, overlap)
    assert ours.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_matches_monai_constant_and_sigma() -> None:
    image = torch.randn(1, 2, 19, 23, 11)
    net = conv_net(3)
    for blend, sigma in (("constant", 0.125), ("gaussian", 0.25)):
        ours = sliding_window(net, image, 8, overlap=0.5, blend=blend, sigma_scale=sigma)
        reference = monai(net, image, (8, 8, 8), 0.5, mode=blend, sigma_scale=sigma)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_identity_predictor_returns_the_image() -> None:
    # Small integers: sums of copies are exact in float32, so the constant mean is bitwise exact.
    image = torch.randint(-50, 50, (2, 1, 19, 23, 11)).float()
    out = sliding_window(lambda x: x, image, (8, 8, 8), overlap=0.5, blend="constant")
    assert torch.equal(out, image)
    # Gaussian weights differ per window, so the weighted mean is exact up to float rounding.
    out = sliding_window(lambda x: x.clone(), image, (8, 8, 8), overlap=0.75, blend="gaussian")
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-6)
    small = torch.randint(-50, 50, (1, 1, 5, 30)).float()
    assert torch.equal(sliding_window(lambda x: x, small, (8, 8), blend="constant"), small)
    numpy_roi = tuple(np.array([8, 8]))  # numpy integers as from a plan
    assert torch.equal(sliding_window(lambda x: x, small, numpy_roi, blend="constant"), small)


def test_list_output_uses_the_first() -> None:
    image = torch.randn(1, 2, 17, 17, 9)
    net = conv_net(3)

    def deep_supervision(x: torch.Tensor) -> list[torch.Tensor]:
        y = net(x)
        return [y, y[:, :, ::2, ::2, ::2]]

    expected = sliding_window(net, image, 8)
    assert torch.equal(sliding_window(deep_supervision, image, 8), expected)
    assert torch.equal(sliding_window(lambda x: tuple(deep_supervision(x)), image, 8), expected)


def test_channel_count_and_dtype_follow_the_predictor_and_out_dtype() -> None:
    image = torch.randn(1, 2, 12, 10)
    out = sliding_window(conv_net(2, out_channels=5), image, 6, out_dtype=torch.float64)
    assert out.shape == (1, 5, 12, 10)
    assert out.dtype == torch.float64


def test_result_is_an_ordinary_tensor() -> None:
    image = torch.randn(1, 2, 12, 10)
    out = sliding_window(conv_net(2), image, 6)
    assert not out.is_inference()
    out.mul_(2)  # callers may post-process in place


def test_batch_size_does_not_change_the_result() -> None:
    image = torch.randn(2, 2, 15, 13, 9)
    net = conv_net(3)
    one = sliding_window(net, image, 6, batch_size=1)
    many = sliding_window(net, image, 6, batch_size=7)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)


def test_autocast_bf16_and_progress_run() -> None:
    image = torch.randn(1, 2, 12, 12, 12)
    net = conv_net(3)
    reference = sliding_window(net, image, 8)
    out = sliding_window(net, image, 8, autocast=torch.bfloat16, progress=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=0.1)


def test_window_starts_end_at_the_edge() -> None:
    assert window_starts(256, 96, 0.5) == [0, 48, 96, 144, 160]
    assert window_starts(100, 96, 0.5) == [0, 4]
    assert window_starts(96, 96, 0.5) == [0]
    assert window_starts(20, 8, 0.0) == [0, 8, 12]
    assert window_starts(10, 4, 0.99) == list(range(7))  # step floors at 1


def test_importance_map_matches_monai_and_is_cached() -> None:
    ours = importance_map((9, 7, 5), "gaussian", 0.125)
    theirs = compute_importance_map((9, 7, 5), mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert ours[4, 3, 2] == 1.0  # odd sizes: the centre voxel sits on the peak
    assert ours.min() == pytest.approx(1e-3)  # corners are floored
    assert importance_map((9, 7, 5), "gaussian", 0.125) is ours
    assert torch.equal(importance_map((3, 4), "constant"), torch.ones(3, 4))


def test_bad_roi_raises() -> None:
    image = torch.randn(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(lambda x: x, image, (4, 4))
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(lambda x: x, image, (4, 0, 4))
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(lambda x: x, image, -2)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(lambda x: x, image, (4, 4.5, 4))


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_overlap_outside_unit_interval_raises(overlap: float) -> None:
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(lambda x: x, torch.randn(1, 1, 8, 8), 4, overlap=overlap)


def test_other_bad_arguments_raise() -> None:
    image = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="image"):
        sliding_window(lambda x: x, torch.randn(8, 8), 4)
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window(lambda x: x, image, 4, batch_size=0)
    with pytest.raises(ValueError, match="blend"):
        sliding_window(lambda x: x, image, 4, blend="hann")
    with pytest.raises(ValueError, match="out_dtype"):
        sliding_window(lambda x: x, image, 4, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="sigma_scale"):
        sliding_window(lambda x: x, image, 4, sigma_scale=0.0)
    with pytest.raises(ValueError, match="predictor output"):
        sliding_window(lambda x: x[:, :, :2], image, 4)
    with pytest.raises(TypeError, match="predictor"):
        sliding_window(lambda x: {"seg": x}, image, 4)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    image = torch.randn(1, 2, 40, 36, 30)
    net = conv_net(3)
    reference = sliding_window(net, image, 16)
    out = sliding_window(net.cuda(), image.cuda(), 16)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), reference, rtol=1e-4, atol=1e-4)
    on_host = sliding_window(net, image.cuda(), 16, device="cpu", window_device="cuda")
    assert on_host.device.type == "cpu"


@pytest.mark.parametrize("slices_per_call", [1, 4, 64])
def test_by_slice_equals_a_2d_window_over_each_axial_slice(slices_per_call) -> None:
    net = conv_net(2)
    volume = torch.randn(2, 2, 21, 17, 7)
    with torch.inference_mode():
        got = sliding_window_by_slice(net, volume, (8, 8), 0.5, 3, slices_per_call=slices_per_call)
        expected = torch.stack(
            [sliding_window(net, volume[..., z], (8, 8), 0.5, 3) for z in range(volume.shape[-1])],
            dim=-1,
        )
    assert got.shape == (2, 3, 21, 17, 7)
    torch.testing.assert_close(got, expected)


def test_by_slice_refuses_a_2d_image_and_a_bad_chunk() -> None:
    with pytest.raises(ValueError, match="needs a volume"):
        sliding_window_by_slice(conv_net(2), torch.zeros(1, 2, 8, 8), (8, 8))
    with pytest.raises(ValueError, match="slices_per_call"):
        sliding_window_by_slice(conv_net(2), torch.zeros(1, 2, 8, 8, 3), (8, 8), slices_per_call=0)
