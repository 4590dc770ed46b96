"""A folder of hostile inputs built from real files, one category per way a file can be bad.

Every damaged DICOM copy first gets its own SOP instance and series UIDs (rewritten in
place at the same length, so byte offsets stay those of the original file): each copy is
then its own ingest unit, and each refusal names exactly one file.
"""

from __future__ import annotations

import gzip
import io
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medssl.types import RejectReason
from tests.store import dicom_factory as f

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
TRUNCATED_SOURCES = (f.CT, f.MR, "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm")
HOSTILE = "../../etc/passwd"


WRITTEN = "written"  # the outcome of an input that converts: a volume, no refusal
ANY_REFUSAL = frozenset(str(code) for code in RejectReason) - {str(RejectReason.INTERNAL)}


@dataclass(frozen=True)
class Entry:
    """One input (a file, or ``member`` of the zip at ``path``) and the outcomes that are right for it."""

    path: Path
    member: str | None = None
    expect: frozenset[str] = frozenset()


@dataclass
class Corpus:
    root: Path
    good_series: list[Path] = field(default_factory=list)
    categories: dict[str, list[Entry]] = field(default_factory=dict)
    good_zip_member: Entry | None = None

    def add(self, category: str, entry: Entry) -> None:
        assert entry.expect, "every input states what a right outcome is"
        self.categories.setdefault(category, []).append(entry)

    def bad_entries(self) -> list[Entry]:
        return [e for entries in self.categories.values() for e in entries]

    def original_names(self) -> set[str]:
        names = {p.name for p in self.good_series}
        for entry in self.bad_entries():
            names.add(entry.path.name)
            if entry.member:
                names.update(
                    part for part in entry.member.split("/") if part not in ("", ".", "..")
                )
        return names


class _Uids:
    """Same-length replacements for a file's SOP instance and series UIDs."""

    def __init__(self) -> None:
        self.counter = 0

    def unique_copy(self, data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for uid in (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)):
            self.counter += 1
            head, _, last = uid.rpartition(".")
            new = f"{head}.9{self.counter:0{len(last) - 1}d}"
            assert len(new) == len(uid), "the replacement must keep every byte offset"
            data = data.replace(uid.encode(), new.encode())
        return data


def pixel_data_offset(data: bytes) -> int:
    return data.rindex(PIXEL_DATA_TAG)


def truncations(data: bytes) -> tuple[dict[int, frozenset[str]], dict[int, frozenset[str]]]:
    """Cut offsets and their right outcomes: (cuts at an element boundary, cuts inside an element).

    Before ``DICM`` the bytes are no DICOM at all. A cut exactly before the pixel data
    element leaves a complete dataset without pixels. Every other cut leaves an element
    shorter than its declared length: the file is truncated (or, in the meta header,
    unparseable). A cut after whole pixel data, inside what follows them, is padding.
    """
    header_end = pixel_data_offset(data)
    size = len(data)
    short = frozenset({"truncated"})
    boundary = {cut: frozenset({"not_an_image"}) for cut in (0, 1, 10, 127, 128, 131)}
    boundary[132] = frozenset({"malformed", "truncated"})
    boundary[header_end] = frozenset({"no_pixels", "truncated"})
    boundary[header_end + 12] = short  # pixel data element header complete, value absent
    boundary[header_end + (size - header_end) // 2] = short | {"decode_failed"}
    pixel_end = _pixel_data_end(data, header_end)
    inside = {cut: short | {"malformed"} for cut in (200, 500, 1000, header_end + 6, (pixel_end or size) - 1)}
    if pixel_end is not None and pixel_end < size - 1:
        # the file goes on after whole pixels (trailing padding, FFFC,FFFC): a cut there is not a shortfall
        inside[size - 1] = frozenset({WRITTEN})
    assert max(inside) < size and 1000 < header_end
    return boundary, inside


def _pixel_data_end(data: bytes, start: int) -> int | None:
    """End offset of a defined-length native PixelData element starting at ``start`` (explicit VR)."""
    if data[start + 4 : start + 6] not in (b"OB", b"OW"):
        return None
    length = int.from_bytes(data[start + 8 : start + 12], "little")
    return None if length == 0xFFFFFFFF else start + 12 + length


def _nifti_header_bytes(shape: tuple[int, ...], dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    # an image of the same dtype tells where a correctly laid-out header puts the data
    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=dtype), np.eye(4))
    raw = header.binaryblock
    offset = int(img.header.get_data_offset()) or 352
    return raw + b"\x00" * (offset - len(raw))


def _gzip_bomb(header: bytes, expanded_bytes: int) -> bytes:
    """A small .nii.gz that inflates to ``expanded_bytes`` of zeros (concatenated gzip members)."""
    chunk = gzip.compress(b"\x00" * (1 << 20), compresslevel=9, mtime=0)
    return gzip.compress(header, mtime=0) + chunk * (expanded_bytes >> 20)


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), mtime=0)


def _flat_nifti_gz() -> bytes:
    """A NIfTI whose sform squashes the third axis to nothing (written by hand: nibabel refuses)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((4, 4, 4))
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    header["vox_offset"] = 352
    return gzip.compress(
        header.binaryblock + b"\x00" * 4 + np.ones(64, np.int16).tobytes(), mtime=0
    )


def _raw_dicom_with(ds: Dataset, **values: str) -> bytes:
    """Serialise ``ds`` with raw element values written verbatim (no validation on the way)."""
    for keyword, value in values.items():
        elem = ds[keyword]
        raw = value.encode("latin-1")
        if len(raw) % 2:
            raw += b"\x00" if elem.VR == "UI" else b" "
        ds[keyword] = pydicom.dataelem.RawDataElement(
            elem.tag, elem.VR, len(raw), raw, 0, False, True
        )
    return f.to_bytes(ds)


def build(root: Path, seed: int = 1234) -> Corpus:
    rng = random.Random(seed)
    uids = _Uids()
    src = root / "src"
    src.mkdir(parents=True)
    corpus = Corpus(src)
    corpus.good_series = f.write(
        f.make_series(6), src / "good", names=[f"good-{k}.dcm" for k in range(6)]
    )

    def put(category: str, name: str, data: bytes, expect: set[str] | frozenset[str]) -> None:
        path = src / category / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        corpus.add(category, Entry(path, expect=frozenset(expect)))

    # truncation at many offsets, of plain, RLE and JPEG 2000 files
    for source in TRUNCATED_SOURCES:
        original = f.testdata(source).read_bytes()
        stem = source.removesuffix(".dcm").lower()
        boundary, inside = truncations(original)
        for category, cuts in (
            ("truncated_at_boundary", boundary),
            ("truncated_inside_element", inside),
        ):
            for offset, expect in cuts.items():
                put(
                    category,
                    f"{stem}-cut{offset:06d}.dcm",
                    uids.unique_copy(original)[:offset],
                    expect,
                )

    # seeded byte flips: half inside the header, half anywhere
    ct = f.testdata(f.CT).read_bytes()
    header_end = pixel_data_offset(ct)
    for k in range(20):
        data = bytearray(uids.unique_copy(ct))
        limit = header_end if k % 2 == 0 else len(data)
        for pos in rng.sample(range(132, limit), rng.randint(1, 8)):
            data[pos] ^= rng.randrange(1, 256)
        put("flipped", f"flip-{k:02d}.dcm", bytes(data), ANY_REFUSAL | {WRITTEN})

    # not DICOM, whatever the name says
    put(
        "not_dicom",
        "notes.dcm",
        b"Patient: Jane Doe\nthis is a text file, not an image\n" * 20,
        {"not_an_image"},
    )
    put(
        "not_dicom",
        "picture.dcm",
        b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(600)),
        {"not_an_image"},
    )
    put("not_dicom", "empty.dcm", b"", {"not_an_image"})
    put("not_dicom", "noise.dcm", bytes(rng.randrange(256) for _ in range(4096)), {"not_an_image"})

    # NIfTI whose header claims far more than it holds / than memory allows
    put(
        "nifti_bomb",
        "header-bomb.nii",
        _nifti_header_bytes((30000, 30000, 30000)) + b"\x00" * 64,
        {"too_large"},
    )
    put(
        "nifti_bomb",
        "gzip-bomb.nii.gz",
        _gzip_bomb(_nifti_header_bytes((2048, 2048, 2048)), 256 << 20),
        {"too_large"},
    )

    # NIfTI files that parse but cannot be a volume
    put(
        "nifti_broken",
        "nan.nii.gz",
        _nifti_gz(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)),
        {"malformed"},
    )
    put("nifti_broken", "flat.nii.gz", _flat_nifti_gz(), {"geometry"})
    whole_nifti = _nifti_gz(np.arange(4096, dtype=np.int16).reshape(16, 16, 16), np.eye(4))
    put("nifti_broken", "cut.nii.gz", whole_nifti[: len(whole_nifti) // 2], {"truncated"})

    # archives: unsafe member names next to a safe one; archives that are not archives
    member_bytes = uids.unique_copy(ct)
    evil = src / "archives" / "evil.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../evil.dcm", uids.unique_copy(ct))
        zf.writestr("/tmp/evil-absolute.dcm", uids.unique_copy(ct))
        zf.writestr("ok/inside.dcm", member_bytes)
    corpus.add("unsafe_zip_member", Entry(evil, "../../evil.dcm", frozenset({"bad_archive"})))
    corpus.add(
        "unsafe_zip_member", Entry(evil, "/tmp/evil-absolute.dcm", frozenset({"bad_archive"}))
    )
    corpus.good_zip_member = Entry(evil, "ok/inside.dcm", frozenset({WRITTEN}))
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in corpus.good_series[:2]:
            zf.writestr(path.name, path.read_bytes())
    put(
        "corrupt_zip",
        "cut-archive.zip",
        whole.getvalue()[: len(whole.getvalue()) // 2],
        {"bad_archive"},
    )
    bomb = src / "archives" / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slice.dcm", b"\x00" * (32 << 20))  # 32 MiB of zeros in ~32 KiB
    corpus.add("zip_bomb", Entry(bomb, "slice.dcm", frozenset({"bad_archive"})))
    put(
        "corrupt_zip",
        "garbage.zip",
        b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(2000)),
        {"bad_archive"},
    )

    # hostile identifiers: traversal strings, NUL and control characters
    ds = f.read_template(f.CT)
    ds.PatientID = HOSTILE
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    put("hostile_ids_valid", "traversal-patient.dcm", f.to_bytes(ds), {WRITTEN})
    for k, (series, sop, patient) in enumerate(
        [
            (HOSTILE, generate_uid(), "p\x00\x01\x1b"),
            (generate_uid(), "1.2.3/../../etc/passwd", HOSTILE + "\x00"),
            (generate_uid() + "\x00\x07", generate_uid(), "..\\..\\etc\\passwd"),
        ]
    ):
        ds = f.read_template(f.CT)
        raw = _raw_dicom_with(ds, SeriesInstanceUID=series, SOPInstanceUID=sop, PatientID=patient)
        # invalid UI/LO values carry no geometry and de-identification replaces them with keyed
        # pseudonyms: they never refuse an image (issue 11), and never reach a path (test_phi)
        put("hostile_ids_raw", f"raw-ids-{k}.dcm", raw, {WRITTEN})

    # a header that promises a huge image over a few bytes of pixels
    for k, size in enumerate((65535, 16000)):
        ds = f.read_template(f.CT)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Rows = ds.Columns = size
        ds.PixelData = b"\x00\x01" * 32
        put("huge_dims", f"huge-{k}.dcm", f.to_bytes(ds), {"too_large", "truncated"})
    return corpus


def rle_decoder_panic(uids_from: int = 900) -> bytes:
    """MR_small_RLE with one byte of its RLE stream changed (offset 3393 -> 0xAF).

    Found by seeded byte flips: pylibjpeg-rle (Rust) panics on it with "index out of
    bounds: the len is 8192 but the index is 8193" and raises pyo3's PanicException,
    which derives from BaseException, not Exception.
    """
    data = bytearray(f.testdata("MR_small_RLE.dcm").read_bytes())
    data[3393] = 0xAF
    uids = _Uids()
    uids.counter = uids_from
    return uids.unique_copy(bytes(data))
