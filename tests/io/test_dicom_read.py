"""Spec: strict where geometry and pixels are concerned, lenient elsewhere.

Bytes after the last complete element are padding, not truncation; only a shortfall is
truncation. An invalid value in an element the volume is not built from never refuses
it; an invalid value in one it is built from refuses it, naming the element by tag and
never quoting the value. Real files: a GE slice from the dcm_qa corpus where present,
pydicom's CT_small always.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medssl.errors import IngestError
from medssl.io.dicom_read import read_dataset
from medssl.io.dicom_scan import scan_file
from medssl.io.sources import SourceItem
from medssl.types import RejectReason
from tests.store import dicom_factory as f
from tests.store.malformed_corpus import _raw_dicom_with as raw_dicom_with
from tools.dicom_conformance import CORPUS

GE_SLICE = CORPUS / "dcm_qa_ge" / "In" / "05_3D_Ax_T1_MP_RAGE_R22"
REAL = [get_testdata_file("CT_small.dcm")] + ([str(min(GE_SLICE.iterdir()))] if GE_SLICE.is_dir() else [])


def pixels(data: bytes) -> np.ndarray:
    return read_dataset(data, stop_before_pixels=False).pixel_array


@pytest.mark.parametrize("path", REAL)
@pytest.mark.parametrize("padding", [b"\0", b"\0" * 7, b"\0" * 8, b"\0" * 13, b"\0" * 100, b"\xff" * 12, b"\xff" * 64, b"\x01\x02\x03\x04\x05" * 3])
def test_bytes_after_the_pixel_data_are_padding(path, padding):
    data = Path(path).read_bytes()
    np.testing.assert_array_equal(pixels(data + padding), pixels(data))
    assert scan_file(SourceItem(path), data + padding)


@pytest.mark.parametrize("path", REAL)
def test_a_cut_inside_the_pixel_data_header_or_value_is_truncation(path):
    data = Path(path).read_bytes()
    start = data.rindex(b"\xe0\x7f\x10\x00")
    end = start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")  # explicit VR OW: 12-byte header
    for cut in (start + 6, start + 12 + 10, end - 1):
        with pytest.raises(IngestError) as err:
            pixels(data[:cut])
        assert err.value.code == RejectReason.TRUNCATED, cut


def test_an_over_long_private_value_does_not_refuse_the_file(tmp_path):
    ds = f.read_template(f.MR)
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0F, "SH", "X" * 21)  # 21 characters in a 16-character VR
    with pydicom.config.disable_value_validation():
        data = f.to_bytes(ds)
    (record,) = scan_file(SourceItem("a.dcm"), data)
    assert record.ipp is not None and record.rows == 64


@pytest.mark.parametrize(("keyword", "tag", "value"), [
    ("ImagePositionPatient", "(0020,0032)", "SECRET^NAME\\1\\2"),
    ("PixelSpacing", "(0028,0030)", "0.5"),  # one value where two are needed
    ("ImageOrientationPatient", "(0020,0037)", "1\\0\\0\\0\\1\\SECRET"),
])
def test_an_invalid_geometry_value_refuses_naming_the_tag_not_the_value(keyword, tag, value):
    data = raw_dicom_with(f.read_template(f.CT), **{keyword: value})
    with pytest.raises(IngestError) as err:
        scan_file(SourceItem("a.dcm"), data)
    assert err.value.code == RejectReason.GEOMETRY and tag in str(err.value)
    assert "SECRET" not in str(err.value)
