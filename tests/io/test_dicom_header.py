"""Spec: the fast header reader gives exactly what pydicom's reader gives.

``scan_file`` reads classic uncompressed files through ``medssl.io.dicom_header`` (its own
walk, pydicom's converters on access). Every record, and every refusal with its code and
message, must equal what the pydicom path gives: on every file of the dcm_qa corpus of real
scanner DICOM, on pydicom's own test files (transfer syntaxes, character sets, DICOMDIRs,
broken files) and on cut and padded copies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medssl.errors import IngestError
from medssl.io.dicom_header import read_header
from medssl.io.dicom_scan import scan_file
from medssl.io.sources import SourceItem
from tools.dicom_conformance import CORPUS

PYDICOM_FILES = Path(get_testdata_file("CT_small.dcm")).parent


def outcome(path: Path, data: bytes, fast: bool):
    try:
        return scan_file(SourceItem(str(path)), data, fast=fast)
    except IngestError as err:
        return ("refused", err.code, err.message)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in (".txt", ".nii", ".json", ".md", ".gz", ".bval", ".bvec"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the dcm_qa corpus is not at {CORPUS}")
def test_every_corpus_file_scans_alike_on_both_paths():
    files = [p for p in files_under(CORPUS) if "/In/" in str(p)]
    assert len(files) > 900
    taken = 0
    for path in files:
        data = path.read_bytes()
        assert outcome(path, data, True) == outcome(path, data, False), path.relative_to(CORPUS)
        taken += read_header(data) is not None
    assert taken > 500  # most classic files take the fast path


def test_pydicom_test_files_scan_alike_on_both_paths():
    files = files_under(PYDICOM_FILES)
    assert len(files) > 50
    for path in files:
        data = path.read_bytes()
        assert outcome(path, data, True) == outcome(path, data, False), path.name


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "chr_japanese.dcm" if (PYDICOM_FILES / "chr_japanese.dcm").exists() else "CT_small.dcm"])
def test_cut_and_padded_copies_scan_alike(name):
    data = Path(get_testdata_file(name)).read_bytes()
    for cut in (140, 300, 700, len(data) // 2, len(data) - 9, len(data) - 1):
        assert outcome(Path(name), data[:cut], True) == outcome(Path(name), data[:cut], False), cut
    for pad in (b"\0" * 3, b"\xff" * 12, b"\x01\x02\x03"):
        assert outcome(Path(name), data + pad, True) == outcome(Path(name), data + pad, False), pad


@pytest.mark.parametrize("syntax", ["ImplicitVRLittleEndian", "ExplicitVRLittleEndian"])
@pytest.mark.parametrize(("charset", "name"), [("ISO_IR 192", "Müller^Zoë"), ("ISO_IR 100", "Müller^Zoë"), ("ISO_IR 144", "Иванов^Иван")])
def test_text_in_a_character_set_reads_as_pydicom_reads_it(tmp_path, syntax, charset, name):
    """Identifiers are pseudonymised from their decoded text: both paths must decode alike."""
    import pydicom.uid

    from tests.store import dicom_factory as f

    ds = f.read_template(f.CT)
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.PatientID = name, name.split("^")[0] + "-7"
    ds.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
    path = tmp_path / "a.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.startswith("Implicit"), little_endian=True)
    data = path.read_bytes()
    header = read_header(data)
    assert header is not None and header.is_implicit == syntax.startswith("Implicit")
    assert (str(header.PatientName), header.PatientID) == (name, name.split("^")[0] + "-7")
    assert outcome(path, data, True) == outcome(path, data, False)
