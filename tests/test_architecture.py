"""The import contracts of DESIGN.md section 2 hold (import-linter contracts in pyproject.toml).

import-linter is part of the ``dev`` extra; without it this test fails rather than skips,
since a skipped architecture check reads as a kept one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_CONTRACTS = {
    "medssl layers (DESIGN.md section 2)",
    "the server side never imports training code (DESIGN.md section 1)",
    "model code (backbones, heads, losses, metrics) imports no training or I/O library (DESIGN.md section 2)",
    "backbones and losses are pure torch: no MONAI, no numpy",
    "heads use MONAI only in the detector and the decoder blocks (detector, pyramid, seg_decoder)",
}
# import-linter sees an external package whole; which parts of MONAI heads may use is pinned here
HEAD_MONAI = ("monai.apps.detection", "monai.networks")


def lint_imports() -> str:
    here = Path(sys.executable).parent  # this interpreter's import-linter first
    exe = shutil.which("lint-imports", path=str(here)) or shutil.which("lint-imports")
    assert exe is not None, (
        "import-linter is not installed, so the import contracts in pyproject.toml go unchecked: "
        "pip install -e '.[dev]' (or pip install 'import-linter>=2.0')"
    )
    return exe


def test_every_expected_contract_is_configured():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {c["name"] for c in config["tool"]["importlinter"]["contracts"]}
    assert EXPECTED_CONTRACTS <= names, (
        f"contracts missing from pyproject.toml: {sorted(EXPECTED_CONTRACTS - names)}"
    )


def test_import_contracts_are_kept():
    result = subprocess.run([lint_imports()], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    report = " ".join(result.stdout.split())  # import-linter wraps long contract names
    for name in EXPECTED_CONTRACTS:
        assert f"{name} KEPT" in report, name
    assert " 0 broken" in report


def test_heads_take_only_monais_detection_and_network_blocks():
    used = set()
    for path in sorted((ROOT / "medssl" / "heads").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                used |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                used.add((path.name, node.module))
    monai = {(file, module) for file, module in used if module.split(".")[0] == "monai"}
    outside = sorted((f, m) for f, m in monai if not m.startswith(HEAD_MONAI))
    assert not outside, f"heads import MONAI beyond {HEAD_MONAI}: {outside}"


def test_ingest_layers_never_import_training_packages():
    """Reading and de-identifying must work (and start fast) without torch or lightning."""
    code = "import sys, medssl.store.ingest, medssl.cli; print(sorted(m for m in ('torch', 'lightning', 'monai') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
