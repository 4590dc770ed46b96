"""build_probe_set: a probe set from the store's own label maps, on the cached grid, held out by patient."""

from __future__ import annotations

import pytest
import torch

from medssl.data.probe_set import ProbeSet, build_probe_set
from medssl.data.split import split_by_patient
from medssl.errors import ConfigError
from medssl.preprocess.label_cache import ensure_label_cache
from medssl.preprocess.volume_cache import ensure_cache
from medssl.store.plan import load_or_make_plan
from tests.data.labelled_store import write_labelled_store
from tests.data.synthetic_store import Spec, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_labelled_store(tmp_path_factory.mktemp("probe_build") / "store")


def test_crops_are_centred_on_their_structure_and_round_trip(store, tmp_path):
    probe = build_probe_set(store, ["liver", "heart"], (8, 8, 8), per_class=3, progress=False)
    assert probe.class_names == ("heart", "liver") and probe.images.shape[1:] == (1, 8, 8, 8)
    assert torch.bincount(probe.labels).tolist() == [3 * len(probe.groups.unique())] * 2
    # liver (soft tissue) and heart (blood) differ in intensity at the crop centres
    centre = probe.images[:, 0, 4, 4, 4]
    assert centre[probe.labels == 0].mean() != pytest.approx(centre[probe.labels == 1].mean())
    again = ProbeSet.load(probe.save(tmp_path / "new" / "p.safetensors"))  # folder made
    assert torch.equal(again.images, probe.images) and again.class_names == probe.class_names


def test_default_crop_is_the_plans_and_tiny_structures_are_dropped(store):
    probe = build_probe_set(store, per_class=1, progress=False)
    assert tuple(probe.images.shape[2:]) == load_or_make_plan(store).crop_size
    assert "liver" in probe.class_names and "lesion_calcified" not in probe.class_names


def test_probe_volumes_are_the_pretraining_validation_patients(store):
    plan = load_or_make_plan(store)
    index = ensure_cache(store, plan, progress=False)
    ensure_label_cache(store, plan, index, progress=False)
    _, val = split_by_patient(index.volumes, 0.5, seed=3)
    assert len(val) >= 2
    probe = build_probe_set(
        store, ["liver"], (8, 8, 8), 2, val_fraction=0.5, seed=3, progress=False
    )
    assert len(probe.groups.unique()) == len(val)


def test_too_few_held_out_volumes_fall_back_to_all_with_a_warning(store, caplog):
    probe = build_probe_set(store, ["liver"], (8, 8, 8), 1, val_fraction=0.0, progress=False)
    assert len(probe.groups.unique()) == 6 and "using all 6 labelled volumes" in caplog.text


def test_bad_requests_name_the_reason(store, tmp_path):
    with pytest.raises(ConfigError, match="liverx.*known"):
        build_probe_set(store, ["liverx"], progress=False)
    with pytest.raises(ConfigError, match="lesion_calcified.*fewer than 50 voxels"):
        build_probe_set(store, ["lesion_calcified"], progress=False)
    with pytest.raises(ConfigError, match="per_class 0"):
        build_probe_set(store, per_class=0, progress=False)
    bare = write_store(tmp_path / "bare", [Spec((32, 32, 24), (2.0, 2.0, 3.0), "CT", "p0")])
    with pytest.raises(ConfigError, match="no label maps"):
        build_probe_set(bare, progress=False)
