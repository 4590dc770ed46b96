"""Spec (issue 15): seeded mutants of real files never crash ingest, never leave a partial
output, never end as ``internal_error``, and ingest's memory stays within its budget.

Mutants (``fuzz_mutator``) come from scanner DICOM of several vendors and transfer syntaxes
(dcm_qa, where present), pydicom's test files and a phantom NIfTI/NRRD: byte flips,
truncation, insertion, header field overwrites at element/field boundaries, repeated or cut
chunks, zip-wrapped mutants. ``ingest_fuzz_run`` ingests them in batches in a process of its
own (``workers=1``, ``max_bytes`` = the budget) and reports every problem by mutant name.

Peak memory: the growth of the process's peak RSS over its RSS after a warm-up ingest of the
unmutated seeds must stay under the budget plus ``MARGIN_MIB``. The margin is what Python's
allocator and libraries add over a run whatever the budget: about 105 MiB at budgets of 4,
32 and 128 MiB alike (1,400 mutants), most of it in the first 200 mutants; over 10,000
mutants it creeps on to ~155 MiB (not yet explained: allocator fragmentation or a small
per-batch leak), so the slow run is held to ``SLOW_MARGIN_MIB``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.store import fuzz_mutator as fm

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MIB = 32
MARGIN_MIB = 128
SLOW_MARGIN_MIB = 192


def fuzz(tmp_path: Path, count: int, batch: int, seed: int = 15) -> tuple[dict, str]:
    report = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.store.ingest_fuzz_run", "--count", str(count), "--batch", str(batch),
         "--seed", str(seed), "--max-mb", str(BUDGET_MIB), "--work", str(tmp_path / "work"), "--report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text()), proc.stderr


def check(report: dict, stderr: str, count: int, margin_mib: int = MARGIN_MIB) -> None:
    assert {k: v[:10] for k, v in report["problems"].items() if v} == {}
    assert sum(report["by_kind"].values()) == count
    assert set(report["by_kind"]) == set(fm.KINDS)
    assert "internal_error" not in report["outcomes"]
    assert report["outcomes"]["written"] > 0 and len(report["outcomes"]) > 5  # the mutants reach many paths
    assert report["peak_growth_mib"] <= BUDGET_MIB + margin_mib, report["peak_growth_mib"]
    assert "Traceback" not in stderr


def test_mutants_are_deterministic_and_of_every_kind(tmp_path, monkeypatch):
    seeds = fm.load_seeds(tmp_path)
    first = fm.make_mutants(seeds, 0, 70, seed=3)
    monkeypatch.setattr(time, "time", lambda: 86_400.0 * 365 * 40)  # a zip stamped "now" would differ
    again = fm.make_mutants(seeds, 0, 70, seed=3)
    assert [m.data for m in first] == [m.data for m in again]
    assert [m.data for m in fm.make_mutants(seeds, 35, 1, seed=3)] == [first[35].data]  # mutant i alone
    assert {m.kind for m in first} == set(fm.KINDS)
    assert all(m.data != s.data for m in first for s in seeds if m.kind != "zip")  # each one mutated
    assert {s.fmt for s in seeds} == {"dicom", "nifti", "nrrd"}


def test_a_field_mutation_lands_on_an_element_boundary(tmp_path):
    seed = next(s for s in fm.load_seeds(tmp_path) if s.label == "pydicom:CT_small.dcm")
    rows = next(e for e in fm.dicom_elements(seed.data) if e.tag == 0x00280010)
    assert (rows.length, seed.data[rows.header : rows.header + 6]) == (2, b"\x28\x00\x10\x00US")


def test_ingest_survives_a_bounded_fuzz_run(tmp_path):
    count = 490
    report, stderr = fuzz(tmp_path, count, batch=163)
    check(report, stderr, count)
    if fm.DICOM_QA.is_dir():
        assert sum(n for label, n in report["by_source"].items() if label.startswith("dcm_qa:")) > 50


@pytest.mark.slow
def test_ingest_survives_ten_thousand_mutants(tmp_path):
    count = 10_000
    report, stderr = fuzz(tmp_path, count, batch=200, seed=1015)
    check(report, stderr, count, SLOW_MARGIN_MIB)
    print(json.dumps({k: v for k, v in report.items() if k != "problems"}, sort_keys=True))


# mutants of the 10,000-mutant run (seed 1015) that were internal_error before their fix:
# a file meta element with a VR pydicom does not know (NotImplementedError escaped the scan),
# a PixelData element of length 0 (None: TypeError in the length check)
FOUND = {4319: "pydicom:SC_rgb_small_odd.dcm", 5313: "pydicom:SC_rgb_small_odd.dcm", 7969: "pydicom:image_dfl.dcm", 1851: "dcm_qa:ge_epi"}


@pytest.mark.parametrize("index", sorted(FOUND))
def test_a_mutant_the_slow_run_found_is_refused_with_a_reason(tmp_path, index):
    from tests.store import store_view as sv
    from tests.store.ingest_run import run

    seeds = fm.load_seeds(tmp_path / "seeds")
    if FOUND[index] not in {s.label for s in seeds}:
        pytest.skip(f"{FOUND[index]} absent here (dcm_qa lives in ../shared/data/dicom_qa)")
    mutant = fm.make_mutants(seeds, index, 1, seed=1015)[0]
    assert mutant.seed == FOUND[index]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / mutant.name).write_bytes(mutant.data)
    summary = run(tmp_path / "src", tmp_path / "store", max_bytes=BUDGET_MIB << 20)
    assert summary.written + sum(summary.rejected.values()) == 1
    assert "internal_error" not in summary.rejected, sv.rejected(tmp_path / "store")
