"""Every random transform is its deterministic twin with drawn parameters, in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from medssl.transforms import (
    AugmentConfig,
    BatchAugment,
    RandAffine,
    RandBlur,
    RandFlip,
    RandGamma,
    RandNoise,
    RandRotate90,
    RandScaleShift,
)


def random_transforms(dims: int) -> list:
    return [
        RandFlip(0.5, spatial_dims=dims),
        RandRotate90(0.7, spatial_dims=dims),
        RandAffine(0.7, spatial_dims=dims),
        RandScaleShift(0.7, spatial_dims=dims),
        RandGamma(0.7, spatial_dims=dims),
        RandNoise(0.7, spatial_dims=dims),
        RandBlur(0.7, spatial_dims=dims),
        BatchAugment.from_config(AugmentConfig(), (16,) * dims),
    ]


def batch(dims: int, b: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn((b, 2) + (16,) * dims, generator=torch.Generator().manual_seed(seed))


CASES = [(dims, t) for dims in (2, 3) for t in random_transforms(dims)]


@pytest.mark.parametrize(("dims", "transform"), CASES, ids=[f"{type(t).__name__}-{d}d" for d, t in CASES])
def test_random_transform_equals_its_twin_for_the_same_seed(dims, transform):
    x = batch(dims)
    out = transform(x, torch.Generator().manual_seed(7))
    twin = transform.sample(x.shape[0], torch.Generator().manual_seed(7))
    assert torch.equal(out, twin(x))
    assert not torch.equal(out, transform(x, torch.Generator().manual_seed(8)))  # seeds matter
    assert out.shape == x.shape


@pytest.mark.parametrize(("dims", "transform"), CASES, ids=[f"{type(t).__name__}-{d}d" for d, t in CASES])
def test_unbatched_sample_is_a_batch_of_one(dims, transform):
    x = batch(dims, b=1)
    out = transform(x[0], torch.Generator().manual_seed(3))
    assert torch.equal(out, transform(x, torch.Generator().manual_seed(3))[0])


SINGLE = [(dims, i) for dims in (2, 3) for i in range(len(random_transforms(dims)) - 1)]


@pytest.mark.parametrize(("dims", "i"), SINGLE, ids=[f"{type(random_transforms(d)[i]).__name__}-{d}d" for d, i in SINGLE])
def test_probability_zero_is_the_identity(dims, i):
    transform = random_transforms(dims)[i]  # a fresh one: parametrized objects are shared
    transform.prob = 0.0
    x = batch(dims)
    assert torch.equal(transform(x, torch.Generator().manual_seed(1)), x)


def test_parameters_are_drawn_per_sample():
    x = batch(3, b=8)
    twin = RandScaleShift(1.0).sample(8, torch.Generator().manual_seed(0))
    assert len(set(twin.scale.tolist())) == 8
    out = twin(x)
    for i in range(8):
        assert torch.allclose(out[i], x[i] * twin.scale[i].float() + twin.shift[i].float())


def test_input_is_never_modified_in_place():
    x = batch(3)
    before = x.clone()
    BatchAugment.from_config(AugmentConfig(flip_prob=1, rot90_prob=1, affine_prob=1, gamma_prob=1, noise_prob=1, blur_prob=1), (16, 16, 16))(x)
    assert torch.equal(x, before)


def test_label_maps_stay_labels_under_a_nearest_warp():
    labels = torch.randint(0, 4, (4, 1, 16, 16, 16)).float()
    # how augment_labelled moves a label map: the image's sampled twin, resampled nearest
    twin = RandAffine(1.0).sample(labels.shape[0], torch.Generator().manual_seed(0))
    out = twin(labels, "nearest")
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("dims", "transform"), CASES, ids=[f"{type(t).__name__}-{d}d" for d, t in CASES])
def test_same_parameters_on_gpu(dims, transform):
    x = batch(dims)
    twin = transform.sample(x.shape[0], torch.Generator().manual_seed(5))
    cpu, gpu = twin(x), twin(x.cuda())
    assert gpu.device.type == "cuda"
    if not isinstance(transform, (RandNoise, BatchAugment)):  # noise fields come from the device's generator
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
