"""Flips, quarter turns and affine warps: conventions, inverses, per-sample application."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.transforms import (
    AffineWarp,
    Flip,
    RandAffine,
    RandFlip,
    RandRotate90,
    Rotate90,
    rotation_matrix,
)


def volume(b: int = 4, shape=(8, 8, 8)) -> torch.Tensor:
    return torch.arange(b * 2 * math.prod(shape), dtype=torch.float32).reshape(b, 2, *shape)


def test_flip_flips_only_the_chosen_samples_and_axes():
    x = volume()
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True], [False, True, False]])
    out = Flip(mask)(x)
    assert torch.equal(out[0], x[0].flip(1))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], x[2].flip(1, 2, 3))
    assert torch.equal(out[3], x[3].flip(2))


def test_flips_and_quarter_turns_are_invertible():
    x = volume(b=16)
    g = torch.Generator().manual_seed(0)
    flip = RandFlip(0.5).sample(16, g)
    assert torch.equal(flip.inverse()(flip(x)), x)
    turn = RandRotate90(1.0).sample(16, g)
    assert torch.equal(turn.inverse()(turn(x)), x)
    assert not torch.equal(turn(x), x)


def test_quarter_turn_is_torch_rot90():
    x = volume(b=3)
    turn = Rotate90(torch.tensor([1, 2, 3]), torch.tensor([[0, 1], [0, 2], [1, 2]]))
    out = turn(x)
    assert torch.equal(out[0], torch.rot90(x[0], 1, (1, 2)))
    assert torch.equal(out[1], torch.rot90(x[1], 2, (1, 3)))
    assert torch.equal(out[2], torch.rot90(x[2], 3, (2, 3)))


def test_quarter_turn_needs_a_square_plane():
    x = volume(shape=(8, 8, 4))
    with pytest.raises(ValueError, match="equal sides"):
        Rotate90(torch.ones(4, dtype=torch.long), torch.tensor([[0, 2]] * 4))(x)
    out = RandRotate90(1.0, planes=[(0, 1)])(x, torch.Generator().manual_seed(0))  # the square plane only
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="rotation planes"):
        RandRotate90(planes=[(0, 3)])


def test_affine_convention_matches_a_quarter_turn():
    """A 90° rotation matrix through grid_sample equals torch.rot90: axis order and centre are right."""
    x = torch.randn(2, 1, 9, 9, 9)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        m = torch.eye(3, dtype=torch.float64)
        m[a, a], m[a, b], m[b, a], m[b, b] = 0.0, 1.0, -1.0, 0.0
        out = AffineWarp(m.expand(2, 3, 3).clone())(x)
        assert torch.allclose(out, torch.rot90(x, 1, (2 + a, 2 + b)), atol=1e-5)


def test_affine_on_a_non_cubic_crop_rotates_in_voxel_space():
    x = torch.randn(1, 1, 12, 12, 6)
    m = torch.eye(3, dtype=torch.float64)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = 0.0, 1.0, -1.0, 0.0
    assert torch.allclose(AffineWarp(m[None])(x), torch.rot90(x, 1, (2, 3)), atol=1e-5)


def test_identity_affine_returns_the_input_and_inverse_undoes_a_rotation():
    x = torch.randn(3, 1, 16, 16, 16)
    assert AffineWarp(torch.eye(3, dtype=torch.float64).expand(3, 3, 3))(x) is x
    i, j, k = torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij")
    smooth = (torch.sin(i / 5) + torch.cos(j / 6) + torch.sin(k / 7 + 1))[None, None].repeat(2, 1, 1, 1, 1)
    warp = RandAffine(1.0, max_rotation_deg=10, scale_range=(0.95, 1.05)).sample(2, torch.Generator().manual_seed(0))
    back = warp.inverse()(warp(smooth))
    centre = (slice(None), slice(None), slice(10, 22), slice(10, 22), slice(10, 22))
    assert (back - smooth)[centre].abs().max() < 0.05 * smooth[centre].abs().mean()


def test_affine_scale_magnifies():
    x = torch.zeros(1, 1, 21, 21, 21)
    x[..., 8:13, 8:13, 8:13] = 1.0  # a 5-voxel cube at the centre
    zoom = AffineWarp(torch.eye(3, dtype=torch.float64)[None] / 2.0)(x)
    assert zoom.sum() > 6 * x.sum()


def test_rotation_matrices_are_rotations():
    angles = torch.rand(5, 3, dtype=torch.float64)
    r = rotation_matrix(angles)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5, dtype=torch.float64))
    assert rotation_matrix(torch.rand(4, 1, dtype=torch.float64)).shape == (4, 2, 2)


def test_2d_batches():
    x = torch.randn(4, 3, 10, 10)
    out = RandAffine(1.0, spatial_dims=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    turn = RandRotate90(1.0, spatial_dims=2).sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(turn.inverse()(turn(x)), x)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="spatial"):
        RandFlip(spatial_dims=3)(torch.randn(4, 4))
    with pytest.raises(ValueError, match="flip mask"):
        Flip(torch.zeros(2, 3, dtype=torch.bool))(torch.randn(4, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial_dims"):
        RandFlip(spatial_dims=4)
    with pytest.raises(ValueError, match="probability"):
        RandFlip(prob=1.5)(torch.randn(1, 1, 4, 4, 4))


@pytest.mark.parametrize("shape", [(7, 9, 5), (12, 10)])
def test_sampling_grid_equals_affine_grid(shape):
    from medssl.transforms.geometric import _grid_theta, sampling_grid

    dims = len(shape)
    matrix = rotation_matrix(torch.rand(3, 1 if dims == 2 else 3, dtype=torch.float64)) * 1.1
    theta = _grid_theta(matrix, shape).float()
    expected = torch.nn.functional.affine_grid(theta, [3, 1, *shape], align_corners=False)
    assert torch.allclose(sampling_grid(theta, shape), expected, atol=1e-6)
