"""The train/validation split keeps every patient on one side, stably."""

from __future__ import annotations

import pytest

from medssl.data.split import split_by_patient
from medssl.preprocess.volume_cache import CachedVolume


def volumes(patients: list[str | None]) -> list[CachedVolume]:
    return [CachedVolume(f"v{i:03d}", f"v{i:03d}.npy", (8, 8, 8), (1.0, 1.0, 1.0), "CT", p, None, 0.0, "0" * 64) for i, p in enumerate(patients)]


def sides(vols, train, val):
    return {vols[i].patient or vols[i].volume_id for i in train}, {vols[i].patient or vols[i].volume_id for i in val}


def test_no_patient_on_both_sides_and_every_volume_once():
    vols = volumes([f"p{i // 3}" for i in range(90)] + [None] * 5)
    train, val = split_by_patient(vols, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(vols)))
    train_p, val_p = sides(vols, train, val)
    assert not train_p & val_p
    assert 0.05 < len(val_p) / (len(train_p) + len(val_p)) < 0.4


def test_split_is_stable_as_the_store_grows_and_changes_with_the_seed():
    small = volumes([f"p{i}" for i in range(40)])
    grown = volumes([f"p{i}" for i in range(40)] + [f"q{i}" for i in range(40)])
    _, val_small = sides(small, *split_by_patient(small, 0.25, seed=1))
    _, val_grown = sides(grown, *split_by_patient(grown, 0.25, seed=1))
    assert val_small == {p for p in val_grown if p.startswith("p")}
    _, val_other = sides(small, *split_by_patient(small, 0.25, seed=2))
    assert val_other != val_small


def test_small_stores_get_both_sides_and_zero_fraction_none():
    two = volumes(["a", "a", "b"])
    train, val = split_by_patient(two, 0.1)
    assert train and val and not set(sides(two, train, val)[0]) & set(sides(two, train, val)[1])
    train, val = split_by_patient(two, 0.0)
    assert (len(train), val) == (3, [])
    for seed in range(20):
        assert split_by_patient(volumes(["a", "a"]), 0.9, seed) == ([0, 1], [])  # one patient: all training
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(two, 1.0)
