"""Every transfer syntax a hospital sends decodes to the same image (real files from pydicom)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from medssl.errors import IngestError
from medssl.types import RejectReason
from tests.io.geometry_reference import medssl_volumes


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended, 12-bit
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # deflated
        ("MR_small_expb.dcm", "1.2.840.10008.1.2.2"),  # big endian
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ],
)
def test_real_files_in_each_syntax_convert_to_the_decoded_pixels(tmp_path, name, syntax):
    src = get_testdata_file(name)
    ds = pydicom.dcmread(src)
    assert ds.file_meta.TransferSyntaxUID == syntax
    (tmp_path / "in").mkdir()
    shutil.copy(src, tmp_path / "in" / "x")
    (volume,) = medssl_volumes(tmp_path / "in")
    expected = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    # the volume holds the same pixel values (in a different voxel order): compare as multisets
    np.testing.assert_allclose(np.sort(volume.array.ravel()), np.sort(expected.ravel()), atol=1e-3)


def test_jpeg_baseline_8bit_grayscale_decodes(tmp_path):
    from PIL import Image

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = (ds.pixel_array.astype(np.float64) / ds.pixel_array.max() * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].VR = "OB"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "jpeg.dcm", enforce_file_format=True)
    (volume,) = medssl_volumes(tmp_path / "in")
    assert np.abs(np.sort(volume.array.ravel()).astype(float) - np.sort(pixels.ravel())).mean() < 3  # lossy


def test_a_jpeg_that_no_decoder_accepts_is_a_decode_refusal():
    """pydicom's JPEG-lossy.dcm has a misplaced marker that pylibjpeg and Pillow both refuse."""
    from medssl.io.dicom_scan import scan_file
    from medssl.io.dicom_stack import build_stacks
    from medssl.io.dicom_volume import read_stack
    from medssl.io.sources import SourceItem

    item = SourceItem(get_testdata_file("JPEG-lossy.dcm"))
    (stack,), _ = build_stacks(scan_file(item, item.read_bytes()))
    with pytest.raises(IngestError) as err:
        read_stack(stack, lambda it: it.read_bytes())
    assert err.value.code == RejectReason.DECODE


def test_colour_images_are_refused_with_a_reason():
    from medssl.io.dicom_scan import scan_file
    from medssl.io.dicom_stack import build_stacks
    from medssl.io.dicom_volume import read_stack
    from medssl.io.sources import SourceItem

    item = SourceItem(get_testdata_file("SC_rgb_small_odd.dcm"))
    (stack,), _ = build_stacks(scan_file(item, item.read_bytes()))
    with pytest.raises(IngestError) as err:
        read_stack(stack, lambda it: it.read_bytes())
    assert err.value.code == RejectReason.UNSUPPORTED and "SamplesPerPixel=3" in err.value.message
