"""Spec: a label table may say what modality its NIfTI/NRRD images are (they carry none).

Without it a NIfTI CT is recorded with no modality and the plan normalises it as ``OT`` (z-score
per volume) while the DICOM CTs beside it get the CT window: one cohort, two intensity scales
(the demo's detector trained on such a mix). ``modality: CT`` on a case puts the NIfTI on the
CT side; a DICOM image keeps the Modality its own header gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.errors import ConfigError
from medssl.store.plan import load_or_make_plan
from tests.store import store_view as sv
from tests.store.test_labels_fixtures import phantom, run, save_nifti, structures_of, write_table
from tools.phantom import write_ct_series


@pytest.fixture
def data(tmp_path: Path) -> Path:
    ph = phantom(seed=1)
    folder = tmp_path / "data"
    save_nifti(ph.image, ph.affine, folder / "ct.nii.gz")
    save_nifti(ph.labels.astype(np.uint8), ph.affine, folder / "ct_seg.nii.gz")
    write_ct_series(ph, folder / "series", patient_id="MODTEST", seed=1)
    return folder


def modalities(store: Path) -> list[str | None]:
    return sorted((v["modality"] for v in sv.volumes(store)), key=str)


def test_a_nifti_case_without_a_modality_has_none(data, tmp_path):
    table = write_table(data / "t.yaml", [{"image": "ct.nii.gz", "mask": "ct_seg.nii.gz"}], structures=structures_of(phantom(seed=1)))
    run(tmp_path / "store", table)
    assert modalities(tmp_path / "store") == [None]


@pytest.mark.parametrize("written", ["CT", "ct", " Ct "])
def test_the_table_modality_is_recorded_for_a_nifti_and_puts_it_under_the_ct_plan(data, tmp_path, written):
    table = write_table(data / "t.yaml", [{"image": "ct.nii.gz", "mask": "ct_seg.nii.gz", "modality": written}], structures=structures_of(phantom(seed=1)))
    store = tmp_path / "store"
    summary = run(store, table, sources=[data])  # the same file listed as a plain source first
    assert summary.written == 2 and summary.rejected == {}
    assert modalities(store) == ["CT", "CT"]  # the NIfTI and the DICOM series
    plan = load_or_make_plan(store)
    assert [plan.norm_for(m).kind for m in modalities(store)] == ["clip_zscore"] * 2  # one CT window for both
    assert plan.norm_for(None).kind == "zscore"  # what the NIfTI got before


def test_a_dicom_image_keeps_its_own_modality(data, tmp_path):
    table = write_table(data / "t.yaml", [{"image": "series", "modality": "MR", "classes": ["normal"]}], classes=["normal"])
    run(tmp_path / "store", table)
    assert modalities(tmp_path / "store") == ["CT"]


def test_the_csv_table_takes_a_modality_column(data, tmp_path):
    (data / "t.csv").write_text("image,mask,modality\nct.nii.gz,ct_seg.nii.gz,CT\n")
    run(tmp_path / "store", data / "t.csv")
    assert modalities(tmp_path / "store") == ["CT"]


@pytest.mark.parametrize("bad", ["computed tomography", "C", "C1", 7, ["CT"]])
def test_a_modality_that_is_not_a_code_is_refused_naming_the_row(data, tmp_path, bad):
    table = write_table(data / "t.yaml", [{"image": "ct.nii.gz"}, {"image": "ct_seg.nii.gz", "modality": bad}])
    with pytest.raises(ConfigError, match="case 2: 'modality' must be a DICOM modality code"):
        run(tmp_path / "store", table)
    assert not (tmp_path / "store").exists()
