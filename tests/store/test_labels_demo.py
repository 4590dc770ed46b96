"""Spec: the demo's labelled cohort (tools/demo_data.py) ingests whole and is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medssl.store import labels as L
from medssl.types import SplitSide
from tests.store import store_view as sv
from tests.store.test_labels_fixtures import label_rejections, run
from tools.demo_data import LABELLED_CASES, NO_LESION, VALIDATION_CASES, _labelled


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    table = _labelled(root / "demo")
    return root, table


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_ingests_with_one_vocabulary(cohort, tmp_path):
    root, table = cohort
    store = tmp_path / "store"
    summary = run(store, None, sources=[root / "demo"])  # the image folder alone: masks live outside it
    assert summary.written == LABELLED_CASES and not sv.rejected(store)
    summary = run(store, table)
    assert (summary.labels_written, summary.written) == (LABELLED_CASES, 0) and not label_rejections(store)
    records = L.read_labels(store)
    names = L.structure_names(store)
    assert names[6] == "liver" and names[105] == "cyst"
    assert L.class_names(store)[0] == NO_LESION
    assert any(r.classes == (NO_LESION,) for r in records.values())
    assert any(r.boxes for r in records.values())
    for record in records.values():
        mask = L.read_label_map(store, record)
        lesion_values = {int(v) for v in np.unique(mask) if v > 100}
        assert {names[v].replace("_", " ") for v in lesion_values} == set(record.classes) - {NO_LESION}
        for box in record.boxes:  # a lesion box encloses voxels of its kind
            assert box.label in {names[v] for v in lesion_values}
    # the fixed validation side: 3 cases, one without lesions; training keeps every kind they show
    split = L.read_split(store)
    val = [records[v] for v, side in split.items() if side == SplitSide.VAL]
    train = [r for v, r in records.items() if split.get(v) != SplitSide.VAL]
    assert len(val) == len(VALIDATION_CASES) and len(train) == LABELLED_CASES - len(VALIDATION_CASES)
    assert any(r.classes == (NO_LESION,) for r in val)
    assert set().union(*(r.classes for r in val)) - {NO_LESION} <= set().union(*(r.classes for r in train))


def test_cohort_is_deterministic(cohort, tmp_path):
    root, _ = cohort
    again = tmp_path / "again"
    _labelled(again / "demo")
    assert digests(again) == digests(root)
