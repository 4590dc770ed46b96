"""The one preprocessing stage: 2D images and 3D volumes alike, exactly as the two copies it replaced."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medssl.preprocess.stage import preprocess, preprocess_labels
from medssl.store.plan import IntensityNorm, Plan
from medssl.transforms.intensity import NormaliseIntensity
from medssl.transforms.spatial import resample_to_spacing

CT = IntensityNorm("clip_zscore", lower=-1000.0, upper=1000.0, mean=40.0, std=300.0)


def plan(spacing=(2.0, 2.0, 3.0), dtype="float16", **norms) -> Plan:
    return Plan(spacing, (32, 32, 32), (32, 32), normalisation=norms, cache_dtype=dtype)


# the two copies before the unification, verbatim: inference.preprocess (3D), cache2d (2D)
def volume_before(array, spacing, modality, plan):
    norm = NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))
    x = norm(torch.from_numpy(np.asarray(array, dtype=np.float32))[None])
    x, reached = resample_to_spacing(x, spacing, plan.target_spacing, "linear")
    return x[0].numpy().astype(plan.cache_dtype), reached


def image_before(array, spacing, modality, plan):
    norm = NormaliseIntensity(**dataclasses.asdict(plan.norm_for(modality)))
    x = norm(torch.from_numpy(np.asarray(array, dtype=np.float32))[None])
    x, reached = resample_to_spacing(x, spacing, plan.target_spacing[:2], "linear")
    return x[0].numpy().astype(plan.cache_dtype), reached


def labels_before(labels, spacing, plan):
    x = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None]
    x, _ = resample_to_spacing(x, spacing, plan.target_spacing, "nearest")
    out = x[0].round().numpy()
    return out.astype(np.uint8 if out.max() < 256 else np.uint16)


def ct_like(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 400.0, size=shape).astype(np.int16)


@pytest.mark.parametrize(("shape", "spacing", "modality"), [
    ((20, 18, 9), (1.5, 1.5, 3.0), "CT"),  # resampled in plane, z kept
    ((12, 10, 6), (2.0, 2.0, 3.0), "MR"),  # at target spacing: normalised only
    ((15, 16, 7), (2.4, 1.7, 4.5), None),  # every axis resampled, default normalisation
])
def test_a_volume_is_preprocessed_as_before(shape, spacing, modality):
    array, p = ct_like(shape), plan(CT=CT)
    out, reached = preprocess(array, spacing, modality, p)
    expected, expected_reached = volume_before(array, spacing, modality, p)
    assert out.dtype == np.float16 and np.array_equal(out, expected) and reached == expected_reached


@pytest.mark.parametrize(("shape", "spacing", "modality"), [
    ((40, 30), (0.5, 0.5), "DX"),  # resampled to target_spacing[:2], z-scored
    ((16, 16), (2.0, 2.0), "CT"),  # at target spacing, CT window
    ((25, 33), (0.7, 1.3), "US"),
])
def test_a_2d_image_is_preprocessed_as_before(shape, spacing, modality):
    array, p = ct_like(shape, seed=1), plan(spacing=(1.0, 1.0, 5.0), CT=CT)
    out, reached = preprocess(array, spacing, modality, p)
    expected, expected_reached = image_before(array, spacing, modality, p)
    assert out.shape == expected.shape and len(reached) == 2
    assert np.array_equal(out, expected) and reached == expected_reached


def test_an_image_and_the_same_pixels_as_one_slice_give_the_same_values():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    p = plan(spacing=(2.0, 2.0, 5.0), dtype="float32")
    flat, reached = preprocess(image, (1.0, 1.0), "MR", p)
    slab, reached_3d = preprocess(image[..., None], (1.0, 1.0, 5.0), "MR", p)
    z = (image - image.mean()) / image.std()
    blocks = z.reshape(2, 2, 2, 2).mean(axis=(1, 3))  # halving with edges aligned: 2x2 means
    assert flat.shape == (2, 2) and reached == (2.0, 2.0) and reached_3d == (2.0, 2.0, 5.0)
    assert np.allclose(flat, blocks, atol=1e-5) and np.allclose(slab[..., 0], flat, atol=1e-6)  # bi- vs trilinear rounding


def test_label_maps_are_resampled_as_before_in_3d_and_2d():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=(20, 18, 9)).astype(np.uint8)
    p = plan()
    assert np.array_equal(preprocess_labels(labels, (1.5, 1.5, 3.0), p), labels_before(labels, (1.5, 1.5, 3.0), p))
    big = labels.astype(np.int32) * 1000
    assert preprocess_labels(big, (1.5, 1.5, 3.0), p).dtype == np.uint16
    flat = preprocess_labels(labels[..., 0], (1.0, 1.0), p)
    assert flat.shape == (10, 9) and set(np.unique(flat)) <= set(range(5))


def test_bad_input_is_refused_with_the_shape_and_spacing():
    p = plan()
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4, 2\)"):
        preprocess(np.zeros((4, 4, 4, 2)), (1.0, 1.0, 1.0, 1.0), "CT", p)
    with pytest.raises(ValueError, match="one spacing per axis"):
        preprocess(np.zeros((4, 4)), (1.0, 1.0, 1.0), "CT", p)
    with pytest.raises(ValueError, match="0..65535"):
        preprocess_labels(np.full((4, 4, 4), -1), (1.0, 1.0, 1.0), p)
