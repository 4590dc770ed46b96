"""NIfTI and NRRD carry no modality: the one the user states is recorded, else none."""

from __future__ import annotations

import sqlite3

from medssl.store.ingest import IngestOptions, ingest
from tools.phantom import make_ct_phantom, write_nifti, write_nrrd


def test_stated_modality_is_recorded_for_volume_files(tmp_path):
    phantom = make_ct_phantom((24, 20, 10), (4.0, 4.0, 5.0), seed=3, n_lesions=1)
    write_nifti(phantom, tmp_path / "src" / "ct.nii.gz")
    write_nrrd(phantom, tmp_path / "src" / "ct.nrrd")
    ingest([tmp_path / "src"], tmp_path / "stated", b"k" * 32, IngestOptions(progress=False, volume_modality="CT"))
    ingest([tmp_path / "src"], tmp_path / "unstated", b"k" * 32, IngestOptions(progress=False))
    for store, expected in (("stated", {"CT"}), ("unstated", {None})):
        con = sqlite3.connect(tmp_path / store / "manifest.sqlite")
        assert {r[0] for r in con.execute("SELECT modality FROM volumes")} == expected
        assert con.execute("SELECT COUNT(*) FROM volumes").fetchone()[0] == 2
        con.close()
