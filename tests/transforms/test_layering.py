"""Layering (DESIGN.md section 2): transforms need torch/numpy/scipy only; the plan needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_after(statement: str, names: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in {names!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())  # a printed list of module names


def test_transforms_import_no_lightning_monai_or_readers():
    assert imported_after("import medssl.transforms", ("lightning", "monai", "nibabel", "medssl.store", "medssl.data")) == []


def test_plan_imports_no_torch():
    assert imported_after("import medssl.store.plan", ("torch", "lightning", "medssl.transforms")) == []
