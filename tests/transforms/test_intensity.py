"""The plan's normalisation and the intensity augmentations: known values and statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.transforms import (
    Blur,
    Gamma,
    Noise,
    NormaliseIntensity,
    ScaleShift,
)


def test_clip_zscore_clips_then_standardises():
    x = torch.tensor([[-3000.0, -100.0, 0.0, 50.0, 3000.0]])
    out = NormaliseIntensity("clip_zscore", lower=-1000.0, upper=1000.0, mean=100.0, std=200.0)(x)
    assert torch.allclose(out, torch.tensor([[-5.5, -1.0, -0.5, -0.25, 4.5]]))


def test_window_maps_to_unit_range():
    out = NormaliseIntensity("window", lower=-175.0, upper=250.0)(np.array([[-1000.0, -175.0, 37.5, 250.0, 900.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))


def test_zscore_is_per_volume_and_per_channel():
    x = torch.stack([torch.randn(10, 10, 10) * 50 + 300, torch.randn(10, 10, 10) * 3 - 7])
    out = NormaliseIntensity("zscore")(x)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2, 3), correction=0), torch.ones(2), atol=1e-5)
    assert torch.equal(NormaliseIntensity()(torch.full((1, 4, 4, 4), 5.0)), torch.zeros(1, 4, 4, 4))  # flat: no NaN


def test_normalisation_window_and_bad_arguments():
    out = NormaliseIntensity("window", lower=0.0, upper=10.0)(torch.full((1, 2, 2, 2), 5.0))
    assert torch.allclose(out, torch.full((1, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="lower < upper"):
        NormaliseIntensity("window", lower=1.0, upper=1.0)
    with pytest.raises(ValueError, match="positive std"):
        NormaliseIntensity("clip_zscore", lower=0.0, upper=1.0, mean=0.0, std=0.0)


def test_scale_shift_and_identity_parameters():
    x = torch.randn(3, 1, 4, 4, 4)
    out = ScaleShift(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([0.0, 0.0, -1.0]))(x)
    assert torch.equal(out[0], x[0])
    assert torch.allclose(out[1], 2 * x[1])
    assert torch.allclose(out[2], x[2] - 1)


def test_gamma_keeps_each_samples_range_and_bends_between():
    x = torch.linspace(-2, 2, 5 * 4 * 4).reshape(1, 1, 5, 4, 4).repeat(2, 1, 1, 1, 1)
    out = Gamma(torch.tensor([1.0, 2.0]))(x)
    assert torch.equal(out[0], x[0])
    assert out[1].min() == pytest.approx(-2.0) and out[1].max() == pytest.approx(2.0, abs=1e-5)
    assert (out[1] <= x[1] + 1e-6).all()  # gamma > 1 darkens the middle
    mid = x[1].flatten()[40]
    assert out[1].flatten()[40] == pytest.approx(((mid + 2) / 4) ** 2 * 4 - 2, abs=1e-5)


def test_noise_has_the_drawn_standard_deviation_and_is_reproducible():
    x = torch.zeros(3, 1, 32, 32, 32)
    noise = Noise(torch.tensor([0.0, 0.1, 0.5]), seed=123)
    out = noise(x)
    assert torch.equal(out[0], x[0])
    assert out[1].std().item() == pytest.approx(0.1, rel=0.02)
    assert out[2].std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.equal(out, noise(x))


def test_blur_keeps_the_mean_and_lowers_the_variance():
    x = torch.randn(2, 1, 24, 24, 24)
    out = Blur(torch.tensor([0.0, 1.0]))(x)
    assert torch.equal(out[0], x[0])
    assert out[1].mean().item() == pytest.approx(x[1].mean().item(), abs=1e-2)
    assert out[1].var() < 0.2 * x[1].var()
    flat = torch.full((1, 1, 8, 8, 8), 3.0)
    assert torch.allclose(Blur(torch.tensor([0.8]))(flat), flat)  # replicated edges: no dark border


def test_blur_of_a_point_is_a_separable_gaussian():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    out = Blur(torch.tensor([1.5]))(x)[0, 0]
    t = torch.arange(15, dtype=torch.float32) - 7
    g = torch.exp(-0.5 * (t / 1.5) ** 2) * (t.abs() <= 5)  # truncated at ceil(3 sigma)
    g = g / g.sum()
    assert torch.allclose(out, g[:, None] * g[None, :], atol=1e-6)
