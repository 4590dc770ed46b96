"""docs/deid_conformance.md is generated from the code and must be current."""

from __future__ import annotations

from medssl.deid import profile_rows
from tools.gen_deid_conformance import DOC, main, render


def test_conformance_doc_is_up_to_date():
    assert DOC.read_text("utf-8") == render(), "run python tools/gen_deid_conformance.py"
    assert main(["--check"]) == 0


def test_doc_lists_every_table_row():
    text = render()
    for row in profile_rows():
        assert f"| {row.tag} | {row.name} | {row.keyword} |" in text
