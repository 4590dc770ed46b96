"""Spec: on real scanner DICOM from every vendor, medssl ingest agrees with dcm2niix.

Every series of the dcm_qa corpus (``../shared/data/dicom_qa``: Siemens mosaic/classic/
enhanced, GE, Philips classic/enhanced, nine transfer syntaxes, 12-bit, fragments) is
ingested once with default settings; each reference frame of dcm2niix must be matched
(same voxels, voxel centres within 0.1 mm; tools/dicom_conformance.py). The per-bullet tests
below read the same stores: 4D series with their b-values and b-vectors, echo and
magnitude/phase splits, Philips precise scaling, colour, lenient private values.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.store import store_view as sv
from tools import dicom_conformance as dc

pytestmark = pytest.mark.skipif(not dc.corpus_available(), reason=f"the dcm_qa corpus is not at {dc.CORPUS} (see ../shared/DATA.md)")
SERIES = dc.read_corpus() if dc.corpus_available() else []


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dc.SeriesResult]:
    root = tmp_path_factory.mktemp("conformance")
    return {s.name: dc.run_series(s, root / str(i)) for i, s in enumerate(SERIES)}


def rows(result: dc.SeriesResult) -> list[dict]:
    """The store's volume rows as SQLite holds them (JSON columns as text)."""
    return sv.volumes(result.store)


def only(results: dict[str, dc.SeriesResult], fragment: str) -> dc.SeriesResult:
    (name,) = [n for n in results if fragment in n]
    return results[name]


@pytest.mark.parametrize("name", [s.name for s in SERIES])
def test_every_series_matches_dcm2niix(results, name):
    result = results[name]
    missing = [f"{f.reference}: {f.why}" for f in result.frames if not f.matched]
    assert result.frames and not missing, (result.outcome, missing[:3], result.rejected[:3])
    assert result.max_corner_mm <= dc.TOL_MM or all(f.by_headers for f in result.frames if f.corner_mm > dc.TOL_MM)


def test_every_vendor_is_covered(results):
    assert {r.series.vendor for r in results.values()} >= {"Siemens", "GE", "Philips"}
    assert len(results) == len(SERIES) >= 49


def test_the_conformance_document_reports_this_run(results):
    """docs/conformance.md is generated from a run; its per-series outcomes are this run's."""
    text = dc.DOC.read_text()
    documented = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \|", text, flags=re.MULTILINE))
    assert {k: v.strip() for k, v in documented.items()} == {n: r.outcome for n, r in results.items()}


def test_repeated_acquisitions_are_one_4d_volume_with_frame_times(results):
    """GE multiband fMRI: 144 single-slice files at 48 positions = one 48-slice volume of 3 frames."""
    (row,) = rows(only(results, "14_Ax_fMRI_HB3"))
    assert (row["ndim"], json.loads(row["shape"])[2:]) == (4, [48, 3])
    frames = json.loads(row["frames"])
    times = [f["time_s"] for f in frames]
    assert len(frames) == 3 and times[0] == 0 and all(b > a for a, b in itertools.pairwise(times))


def test_diffusion_b_values_and_vectors_equal_dcm2niix(results):
    """b-values equal dcm2niix's .bval; b-vectors (unit, patient LPS in the manifest) equal its .bvec
    once turned into dcm2niix's convention (voxel axes of its image, x flipped for a positive
    determinant): Siemens XA60 (standard elements) and GE (logical frame, 0019,10BB-BD)."""
    checked = 0
    for result in (only(results, "01_Ax_DWI_TENSOR"), only(results, "XA60")):
        ours = [json.loads(r["frames"]) for r in rows(result) if r["frames"]]
        for ref in result.series.reference_paths():
            if not ref.with_suffix(".bval").exists():
                continue
            bvals = np.loadtxt(ref.with_suffix(".bval"))
            bvecs = np.loadtxt(ref.with_suffix(".bvec")).T
            rot = nib.load(ref).affine[:3, :3]
            rot = rot / np.linalg.norm(rot, axis=0)
            candidates = [f for f in ours if len(f) == len(bvals) and np.allclose([x["b_value"] for x in f], bvals)]
            assert candidates, ref.name

            def error(frames, bvecs=bvecs, rot=rot) -> float:
                worst = 0.0
                for frame, want in zip(frames, bvecs):
                    if frame["b_vector"] is None:
                        if np.abs(want).max() > 0:
                            return np.inf
                        continue
                    vox = rot.T @ (np.array(frame["b_vector"]) * [-1, -1, 1])  # LPS -> RAS -> voxel axes
                    vox[0] *= -1 if np.linalg.det(rot) > 0 else 1
                    worst = max(worst, float(np.abs(vox - want).max()))
                return worst

            assert min(error(f) for f in candidates) < 1e-3, ref.name  # the manifest's are unit vectors; GE writes 6 decimals
            checked += 1
    assert checked == 5  # the GE tensor and four XA60 diffusion series


def test_echoes_and_magnitude_phase_are_separate_volumes(results):
    """Philips dual echo: magnitude and phase of two echoes in one folder -> four volumes."""
    found = rows(only(results, "1301_Dual-echo_iso"))
    assert len(found) == 4 and {json.loads(r["shape"])[2] for r in found} == {30}


def test_philips_values_are_precise_floating_point_and_say_so(results):
    for fragment in ("dcm_qa_enh/In/Philips", "201_T1W_TSE", "Magdeburg_2014/fmri"):
        found = rows(only(results, fragment))
        assert found and {r["scaling"] for r in found} == {"philips_precise"}, fragment
        assert all(r["dtype"] == "float32" for r in found)  # never float64


def test_colour_images_keep_each_channel_as_a_frame(results):
    (row,) = rows(only(results, "14_DWI_dir80_PA"))
    assert row["ndim"] == 4 and json.loads(row["shape"])[3] == 3
    assert [f["channel"] for f in json.loads(row["frames"])] == ["R", "G", "B"]


def test_an_invalid_value_in_a_private_element_does_not_refuse_the_series(results):
    """GE (0043,1080) is a DS holding text: the volume is written; the element (private) is gone."""
    result = only(results, "05_3D_Ax_T1_MP_RAGE")
    (row,) = rows(result)
    header = json.loads((result.store / row["header_path"]).read_text())
    assert "00431080" not in header and not result.rejected


def test_documents_without_pixels_are_refused_by_reason_and_images_kept(results):
    """The XA60 folder holds SR documents beside ten enhanced series."""
    result = only(results, "XA60")
    assert {code for code, _ in result.rejected} == {"no_pixels"}
    assert result.volumes == 10


def test_every_written_volume_is_in_ras_order_with_its_geometry_kind(results):
    for result in results.values():
        for row in rows(result):
            if row["source_kind"] == "nifti":  # a stray NIfTI the corpus authors left in a folder
                continue
            assert row["axcodes"] == "RAS" and row["geometry"] == "patient", result.series.name
            assert row["dtype"] != "float64"
            assert Path(result.store / row["path"]).is_file()
