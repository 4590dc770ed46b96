"""Broken uploads generated on the spot: each case is (name, httpx request kwargs).

Truncated DICOM (pydicom's packaged files cut at many offsets), bad and hostile zips
(traversal, absolute names, bombs, garbage), NIfTI header bombs and truncations, random
bytes, empty uploads, wrong content types and broken multipart framing.
"""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import pydicom.data

from tests.inference.server.payloads import dicom_series, nifti_bytes, zip_of

DICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_truncated.dcm"]
LOCAL_FILES = Path(pydicom.data.__file__).parent / "test_files"  # packaged: never downloaded


def _files(*blobs: bytes) -> dict:
    return {"files": [("file", (f"f{i}", b, "application/octet-stream")) for i, b in enumerate(blobs)]}


def _raw(body: bytes, content_type: str) -> dict:
    return {"content": body, "headers": {"content-type": content_type}}


def _nifti_with(shape: tuple[int, ...] | None = None, srow_x0=None, vox_offset=None, sizeof=None) -> bytes:
    data = bytearray(nifti_bytes())
    if shape is not None:
        dims = [len(shape), *shape] + [1] * (7 - len(shape))
        data[40:56] = struct.pack("<8h", *dims)
    if srow_x0 is not None:
        data[280:284] = struct.pack("<f", srow_x0)
    if vox_offset is not None:
        data[108:112] = struct.pack("<f", vox_offset)
    if sizeof is not None:
        data[0:4] = struct.pack("<i", sizeof)
    return bytes(data)


def cases(seed: int = 7) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict]] = []
    for name in DICOM_FILES:
        path = LOCAL_FILES / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        for cut in sorted(rng.sample(range(1, len(data) - 1), 24)):
            out.append((f"truncated {name} at {cut}", _files(data[:cut])))
    series = dicom_series(3)
    out.append(("series with one truncated slice", _files(series[0], series[1][: len(series[1]) // 2], series[2])))
    out.append(("two series mixed", _files(*series, *dicom_series(2))))
    for k in range(12):
        blob = bytearray(series[0])
        for _ in range(20):
            blob[rng.randrange(132, 1200)] = rng.randrange(256)  # flip header bytes
        out.append((f"dicom header bytes flipped {k}", _files(bytes(blob))))
    out += [
        ("zip traversal", _files(zip_of({"../../../tmp/medssl-escape.dcm": series[0]}))),
        ("zip absolute name", _files(zip_of({"/etc/medssl.dcm": series[0]}))),
        ("zip backslash traversal", _files(zip_of({"..\\..\\evil.dcm": series[0]}))),
        ("zip bomb", _files(zip_of({"bomb.dcm": b"\0" * (40 << 20)}))),
        ("empty zip", _files(zip_of({}))),
        ("zip of text", _files(zip_of({"notes.txt": b"hello"}))),
        ("zip of a zip", _files(zip_of({"inner.zip": zip_of({"a.dcm": series[0]})}))),
        ("zip with a truncated slice", _files(zip_of({"a.dcm": series[0][:500]}))),
        ("zip plus dicom", _files(zip_of({"a.dcm": series[0]}), series[1])),
    ]
    good_zip = zip_of({f"s{i}.dcm": s for i, s in enumerate(series)})
    for cut in sorted(rng.sample(range(4, len(good_zip) - 1), 20)):
        out.append((f"zip truncated at {cut}", _files(good_zip[:cut])))
    for k in range(6):
        out.append((f"zip garbage {k}", _files(b"PK\x03\x04" + rng.randbytes(rng.randrange(10, 5000)))))
    out.append(("encrypted-flag zip", _files(_encrypted_flag(good_zip))))
    bombs = [(30000, 30000, 30000), (1, 1, 2**15 - 1), (2**15 - 1, 2**15 - 1, 2), (0, 10, 10), (-5, 10, 10), (4, 4, 4, 4, 4, 4, 4)]
    for shape in bombs:
        out.append((f"nifti header bomb {shape}", _files(_nifti_with(shape))))
        out.append((f"gzipped nifti header bomb {shape}", _files(gzip.compress(_nifti_with(shape)))))
    nii = nifti_bytes()
    out += [
        ("nifti bad sizeof_hdr", _files(_nifti_with(sizeof=1234))),
        ("nifti nan affine", _files(_nifti_with(srow_x0=float("nan")))),
        ("nifti huge vox_offset", _files(_nifti_with(vox_offset=1e12))),
        ("nifti negative vox_offset", _files(_nifti_with(vox_offset=-400))),
        ("gzip garbage", _files(b"\x1f\x8b" + rng.randbytes(300))),
        ("gzip of text", _files(gzip.compress(b"hello" * 1000))),
        ("gzip bomb", _files(gzip.compress(b"\0" * (64 << 20)))),
        ("nifti plus dicom", _files(nii, series[0])),
        ("nrrd detached", _files(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\ndata file: /etc/passwd\nencoding: raw\n\n")),
        ("nrrd bomb", _files(b"NRRD0004\ntype: double\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\nspace: LPS\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n\n")),
        ("nrrd garbage", _files(b"NRRD0004\n" + rng.randbytes(200))),
    ]
    for cut in sorted(rng.sample(range(1, len(nii) - 1), 12)):
        out.append((f"nifti truncated at {cut}", _files(nii[:cut])))
    for k in range(16):
        out.append((f"random bytes {k}", _files(rng.randbytes(rng.choice([1, 100, 352, 4096, 70000])))))
    out += [
        ("empty file part", _files(b"")),
        ("no parts", _raw(b"--b--\r\n", "multipart/form-data; boundary=b")),
        ("empty body multipart", _raw(b"", "multipart/form-data; boundary=b")),
        ("multipart without boundary", _raw(b"--b\r\n", "multipart/form-data")),
        ("multipart unterminated", _raw(b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + series[0], "multipart/form-data; boundary=b")),
        ("multipart garbage", _raw(rng.randbytes(2000), "multipart/form-data; boundary=b")),
        ("multipart huge part header", _raw(b"--b\r\nX-Bomb: " + b"a" * 200000 + b"\r\n\r\nzz\r\n--b--\r\n", "multipart/form-data; boundary=b")),
        ("multipart many headers", _raw(b"--b\r\n" + b"X: y\r\n" * 5000 + b"\r\nzz\r\n--b--\r\n", "multipart/form-data; boundary=b")),
        ("multipart other field", {"files": [("notfile", ("x", series[0]))]}),
        ("multipart field without filename", {"data": {"comment": "hello"}}),
        ("too many files", _files(*([series[0]] * 70))),
        ("client file name traversal", {"files": [("file", ("../../../../tmp/medssl-pwned", b"junk"))]}),
        ("wrong content type text", _raw(series[0], "text/plain")),
        ("wrong content type json", _raw(b"{}", "application/json")),
        ("missing content type", {"content": series[0], "headers": {"content-type": ""}}),
        ("form-urlencoded", _raw(b"file=abc", "application/x-www-form-urlencoded")),
        ("raw empty dicom", _raw(b"", "application/dicom")),
        ("raw random octets", _raw(rng.randbytes(1000), "application/octet-stream")),
        ("raw truncated dicom", _raw(series[0][:700], "application/dicom")),
        ("raw zip traversal", _raw(zip_of({"../x.dcm": series[0]}), "application/zip")),
        ("bad outputs query", {**_files(series[0]), "params": {"outputs": "json,exe"}}),
        ("empty outputs query", {**_files(series[0]), "params": {"outputs": ","}}),
        ("bad format query", {**_files(series[0]), "params": {"format": "xml"}}),
    ]
    return out


def _encrypted_flag(data: bytes) -> bytes:
    blob = bytearray(data)
    blob[6] |= 1  # general purpose flag bit 0 of the first local header: encrypted
    index = blob.find(b"PK\x01\x02")
    if index >= 0:
        blob[index + 8] |= 1
    return bytes(blob)

