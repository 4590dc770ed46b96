"""Fingerprint → plan → plan.json: decisions follow from the data and survive a round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medssl.store.fingerprint import fingerprint
from medssl.store.plan import (
    IMAGE_PLAN_CROP_DEPTH,
    IMAGE_PLAN_SLICE_MM,
    PLAN_FILE,
    IntensityNorm,
    Plan,
    fit_crop_size,
    make_plan,
    plan_for_images,
    target_spacing,
)
from medssl.store.selection import foreground_mask, frame_rows
from tests.data.synthetic_store import Spec, add_row, phantom_array, volume_row, write_store


def test_target_spacing_is_the_median(tmp_path):
    spacings = [(1.0, 1.0, 2.0), (1.0, 1.0, 2.0), (2.0, 2.0, 2.5)]
    store = write_store(tmp_path, [Spec((24, 24, 16), s, seed=i) for i, s in enumerate(spacings)])
    plan = make_plan(fingerprint(store))
    assert plan.target_spacing == (1.0, 1.0, 2.0)


def test_anisotropic_axis_takes_its_10th_percentile(tmp_path):
    spacings = [(0.8, 0.8, 1.5)] + [(0.8, 0.8, 5.0)] * 4
    store = write_store(tmp_path, [Spec((24, 24, 12), s, seed=i) for i, s in enumerate(spacings)])
    fp = fingerprint(store)
    assert fp["all"]["spacing_median"] == [0.8, 0.8, 5.0]
    plan = make_plan(fp)
    assert plan.target_spacing == pytest.approx((0.8, 0.8, float(np.percentile([1.5, 5, 5, 5, 5], 10))))


def test_anisotropy_rule_never_goes_finer_than_the_other_axes():
    assert target_spacing([1.0, 1.0, 4.0], [1.0, 1.0, 0.5]) == [1.0, 1.0, 1.0]
    assert target_spacing([1.0, 1.0, 2.9], [1.0, 1.0, 0.5]) == [1.0, 1.0, 2.9]  # 2.9 < 3x: median kept


@pytest.mark.parametrize(
    ("median_shape", "budget", "expected"),
    [
        ([300, 300, 200], 96**3, (96, 96, 96)),
        ([200, 200, 40], 96**3, (160, 160, 32)),  # a short axis gives its budget to the others
        ([100, 70, 300], 96**3, (96, 64, 128)),
        ([20, 20, 20], 96**3, (32, 32, 32)),  # never below the divisor
        ([512, 512], 256**2, (256, 256)),
    ],
)
def test_crop_size_fits_budget_and_median_shape(median_shape, budget, expected):
    size = fit_crop_size(median_shape, budget)
    assert size == expected
    assert all(s % 32 == 0 for s in size)
    assert np.prod(size) <= budget or min(median_shape) < 32


def test_crop_size_from_store_follows_median_shape_at_target_spacing(tmp_path):
    # 96x96x40 voxels at 2x2x4 mm: 192x192x160 mm; at the median spacing: 96x96x40 → z takes 32
    store = write_store(tmp_path, [Spec((96, 96, 40), (2.0, 2.0, 4.0), seed=i) for i in range(3)])
    plan = make_plan(fingerprint(store))
    assert plan.crop_size == (96, 96, 32)
    assert plan.crop_size_2d == (96, 96)
    assert make_plan(fingerprint(store), crop_size=(64, 64, 64)).crop_size == (64, 64, 64)


def test_ct_normalisation_uses_foreground_percentiles(tmp_path):
    specs = [Spec((32, 32, 16), (2.0, 2.0, 3.0), "CT", seed=i) for i in range(3)]
    store = write_store(tmp_path, specs)
    plan = make_plan(fingerprint(store, voxels_per_volume=10**6))  # every voxel sampled: exact
    pooled = np.concatenate([a[foreground_mask(a, "CT")] for a in (phantom_array(s) for s in specs)]).astype(np.float64)
    norm = plan.norm_for("CT")
    assert norm.kind == "clip_zscore"
    assert norm.lower == pytest.approx(np.percentile(pooled, 0.5))
    assert norm.upper == pytest.approx(np.percentile(pooled, 99.5))
    assert norm.mean == pytest.approx(pooled.mean())
    assert norm.std == pytest.approx(pooled.std())
    assert norm.lower > -950  # air is not foreground; lungs are


def test_ct_window_and_other_modalities(tmp_path):
    specs = [Spec(modality="CT", seed=1), Spec(modality="MR", seed=2), Spec(modality=None, seed=3)]
    store = write_store(tmp_path, specs)
    fp = fingerprint(store)
    assert sorted(fp["modalities"]) == ["CT", "MR", "OT"]
    plan = make_plan(fp, ct_window=(-175.0, 250.0))
    assert plan.norm_for("CT") == IntensityNorm("window", lower=-175.0, upper=250.0)
    assert plan.norm_for("MR").kind == "zscore"
    assert plan.norm_for(None).kind == "zscore"
    assert plan.norm_for("PT") == plan.default_normalisation


def test_intensity_sample_is_bounded(tmp_path):
    store = write_store(tmp_path, [Spec((40, 40, 20), seed=i) for i in range(5)])
    fp = fingerprint(store, max_volumes_per_modality=2, voxels_per_volume=500)
    assert fp["modalities"]["CT"]["intensity"]["sampled_volumes"] == 2
    assert fp["modalities"]["CT"]["intensity"]["sampled_voxels"] == 1000
    assert fp["modalities"]["CT"]["count"] == 5


def test_2d_and_thin_volumes_are_left_out_and_4d_series_count_by_frame(tmp_path):
    store = write_store(tmp_path, [Spec(seed=1), Spec(seed=2)])
    add_row(store, "x2d", ndim=2, shape=[96, 48], spacing=[1.0, 1.0], axcodes="2D", modality="DX")
    add_row(store, "thin", ndim=3, shape=[128, 128, 1], spacing=[0.7, 0.7, 5.0], axcodes="RAS", modality="CT")
    fp = fingerprint(store)
    assert (fp["volumes"], fp["selected"]) == (4, 2)
    plan = make_plan(fp)
    assert not plan.selects(volume_row(ndim=3, shape="[128,128,1]", axcodes="RAS"))
    assert plan.selects(volume_row(ndim=3, shape="[40,36,24]", axcodes="RAS"))
    series = {"volume_id": "x4d", "ndim": 4, "shape": "[64,64,24,3]", "axcodes": "RAS", "patient": "p"}
    assert plan.selects(volume_row(**series)) and not plan.selects(volume_row(**{**series, "shape": "[64,64,1,3]"}))
    frames = frame_rows(volume_row(**series))  # each frame of a 4D series is one 3D unit for training, same patient
    assert [(f.volume_id, f.frame, f.shape, f.patient) for f in frames] == [(f"x4d.t{t:04d}", t, (64, 64, 24), "p") for t in range(3)]


def test_a_store_without_volumes_cannot_be_planned(tmp_path):
    store = write_store(tmp_path, [])
    add_row(store, "x2d", ndim=2, shape=[96, 48], spacing=[1.0, 1.0], axcodes="2D")
    with pytest.raises(ValueError, match="no 3D volume"):
        make_plan(fingerprint(store))


def test_a_store_of_2d_images_is_planned_from_their_median_pixel_spacing_and_size(tmp_path):
    store = write_store(tmp_path, [Spec(seed=1)])  # a volume: not what this plan looks at
    for i, (shape, spacing) in enumerate([([300, 200], [0.2, 0.3]), ([400, 300], [0.1, 0.3]), ([500, 400], [0.3, 0.5])]):
        add_row(store, f"x{i}", ndim=2, shape=shape, spacing=spacing, axcodes="2D", modality="DX")
    plan = plan_for_images(store)
    assert plan.target_spacing == (0.2, 0.3, IMAGE_PLAN_SLICE_MM) == (0.2, 0.3, 1.0)
    assert plan.crop_size_2d == (256, 256) and plan.crop_size == (256, 256, IMAGE_PLAN_CROP_DEPTH) == (256, 256, 32)
    assert plan.normalisation == {} and plan.norm_for("DX") == IntensityNorm("zscore")
    assert plan_for_images(store, crop_size_2d=(64, 96)).crop_size == (64, 96, 32)
    with pytest.raises(ValueError, match="no 2D image"):
        plan_for_images(write_store(tmp_path / "volumes_only", [Spec(seed=2)]))


def test_json_round_trip_save_load_and_hash(tmp_path):
    store = write_store(tmp_path, [Spec(modality="CT", seed=1), Spec(modality="MR", seed=2)])
    plan = make_plan(fingerprint(store))
    assert Plan.from_json(plan.to_json()) == plan
    path = plan.save(store)
    assert path == store / PLAN_FILE
    assert not [p for p in store.iterdir() if ".medssl-tmp" in p.name]
    assert Plan.load(store) == plan
    assert Plan.load(store).hash == plan.hash
    assert dataclasses.replace(plan, cache_dtype="float32").hash != plan.hash
    assert json.loads(plan.to_json())["version"] == 1


def test_bad_plan_json_is_refused(tmp_path):
    plan = Plan((1.0, 1.0, 1.0), (96, 96, 96), (256, 256))
    data = json.loads(plan.to_json())
    with pytest.raises(ValueError, match="version"):
        Plan.from_json(json.dumps({**data, "version": 99}))
    with pytest.raises(ValueError, match="missing"):
        Plan.from_json(json.dumps({k: v for k, v in data.items() if k != "crop_size"}))
    with pytest.raises(ValueError, match="target_spacing"):
        Plan.from_json(json.dumps({**data, "target_spacing": [1.0, 0.0, 1.0]}))
    with pytest.raises(ValueError, match="kind"):
        IntensityNorm("minmax")
    with pytest.raises(FileNotFoundError, match="no plan"):
        Plan.load(tmp_path)


def test_plan_from_a_real_ingest_of_phantom_nifti(tmp_path):
    from medssl.deid import load_or_create_key
    from medssl.store.ingest import IngestOptions, ingest
    from tools.phantom import make_ct_phantom, write_nifti

    for i, spacing in enumerate([(1.5, 1.5, 3.0), (1.5, 1.5, 3.0), (2.0, 2.0, 3.0)]):
        write_nifti(make_ct_phantom((48, 48, 24), spacing, seed=i, n_lesions=0), tmp_path / "in" / f"ct{i}.nii.gz")
    key = load_or_create_key(tmp_path / "k.key")
    ingest([tmp_path / "in"], tmp_path / "store", key, IngestOptions(progress=False))
    fp = fingerprint(tmp_path / "store")
    assert fp["selected"] == 3
    plan = make_plan(fp)
    assert plan.target_spacing == (1.5, 1.5, 3.0)
    assert plan.norm_for(None).kind == "zscore"  # NIfTI carries no modality
