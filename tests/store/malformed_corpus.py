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

from tests.store import dicom_factory as f

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
TRUNCATED_SOURCES = (f.CT, f.MR, "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm")
HOSTILE = "../../etc/passwd"


@dataclass(frozen=True)
class Entry:
    """One input: a file, or a member of a zip file (``member``)."""

    path: Path
    member: str | None = None


@dataclass
class Corpus:
    root: Path
    good_series: list[Path] = field(default_factory=list)
    categories: dict[str, list[Entry]] = field(default_factory=dict)
    good_zip_member: Entry | None = None

    def add(self, category: str, entry: Entry) -> None:
        self.categories.setdefault(category, []).append(entry)

    def bad_entries(self) -> list[Entry]:
        return [e for entries in self.categories.values() for e in entries]

    def original_names(self) -> set[str]:
        names = {p.name for p in self.good_series}
        for entry in self.bad_entries():
            names.add(entry.path.name)
            if entry.member:
                names.update(part for part in entry.member.split("/") if part not in ("", ".", ".."))
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


def truncation_offsets(data: bytes) -> list[int]:
    header_end = pixel_data_offset(data)
    size = len(data)
    offsets = {0, 1, 10, 127, 128, 131, 132, 200, 500, 1000, header_end, header_end + 6, header_end + 12,
               header_end + (size - header_end) // 2, size - 1}
    return sorted(o for o in offsets if o < size)


def _nifti_header_bytes(shape: tuple[int, ...], dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=dtype), np.eye(4))  # for a correctly laid-out header
    raw = header.binaryblock
    offset = int(img.header.get_data_offset()) or 352
    return raw + b"\x00" * (offset - len(raw))


def _gzip_bomb(header: bytes, expanded_bytes: int) -> bytes:
    """A small .nii.gz that inflates to ``expanded_bytes`` of zeros (concatenated gzip members)."""
    chunk = gzip.compress(b"\x00" * (1 << 20), compresslevel=9, mtime=0)
    return gzip.compress(header, mtime=0) + chunk * (expanded_bytes >> 20)


def _raw_dicom_with(ds: Dataset, **values: str) -> bytes:
    """Serialise ``ds`` with raw element values written verbatim (no validation on the way)."""
    for keyword, value in values.items():
        elem = ds[keyword]
        raw = value.encode("latin-1")
        if len(raw) % 2:
            raw += b"\x00" if elem.VR == "UI" else b" "
        ds[keyword] = pydicom.dataelem.RawDataElement(elem.tag, elem.VR, len(raw), raw, 0, False, True)
    return f.to_bytes(ds)


def build(root: Path, seed: int = 1234) -> Corpus:
    rng = random.Random(seed)
    uids = _Uids()
    src = root / "src"
    src.mkdir(parents=True)
    corpus = Corpus(src)
    corpus.good_series = f.write(f.make_series(6), src / "good", names=[f"good-{k}.dcm" for k in range(6)])

    def put(category: str, name: str, data: bytes) -> None:
        path = src / category / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        corpus.add(category, Entry(path))

    # truncation at many offsets, of plain, RLE and JPEG 2000 files
    for source in TRUNCATED_SOURCES:
        original = f.testdata(source).read_bytes()
        stem = source.removesuffix(".dcm").lower()
        for offset in truncation_offsets(original):
            put("truncated", f"{stem}-cut{offset:06d}.dcm", uids.unique_copy(original)[:offset])

    # seeded byte flips: half inside the header, half anywhere
    ct = f.testdata(f.CT).read_bytes()
    header_end = pixel_data_offset(ct)
    for k in range(20):
        data = bytearray(uids.unique_copy(ct))
        limit = header_end if k % 2 == 0 else len(data)
        for pos in rng.sample(range(132, limit), rng.randint(1, 8)):
            data[pos] ^= rng.randrange(1, 256)
        put("flipped", f"flip-{k:02d}.dcm", bytes(data))

    # not DICOM, whatever the name says
    put("not_dicom", "notes.dcm", b"Patient: Jane Doe\nthis is a text file, not an image\n" * 20)
    put("not_dicom", "picture.dcm", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(600)))
    put("not_dicom", "empty.dcm", b"")
    put("not_dicom", "noise.dcm", bytes(rng.randrange(256) for _ in range(4096)))

    # NIfTI whose header claims far more than it holds / than memory allows
    put("nifti_bomb", "header-bomb.nii", _nifti_header_bytes((30000, 30000, 30000)) + b"\x00" * 64)
    put("nifti_bomb", "gzip-bomb.nii.gz", _gzip_bomb(_nifti_header_bytes((2048, 2048, 2048)), 256 << 20))

    # archives: unsafe member names next to a safe one; archives that are not archives
    member_bytes = uids.unique_copy(ct)
    evil = src / "archives" / "evil.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../evil.dcm", uids.unique_copy(ct))
        zf.writestr("/tmp/evil-absolute.dcm", uids.unique_copy(ct))
        zf.writestr("ok/inside.dcm", member_bytes)
    corpus.add("unsafe_zip_member", Entry(evil, "../../evil.dcm"))
    corpus.add("unsafe_zip_member", Entry(evil, "/tmp/evil-absolute.dcm"))
    corpus.good_zip_member = Entry(evil, "ok/inside.dcm")
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in corpus.good_series[:2]:
            zf.writestr(path.name, path.read_bytes())
    put("corrupt_zip", "cut-archive.zip", whole.getvalue()[: len(whole.getvalue()) // 2])
    put("corrupt_zip", "garbage.zip", b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(2000)))

    # hostile identifiers: traversal strings, NUL and control characters
    ds = f.read_template(f.CT)
    ds.PatientID = HOSTILE
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    put("hostile_ids_valid", "traversal-patient.dcm", f.to_bytes(ds))
    for k, (series, sop, patient) in enumerate(
        [
            (HOSTILE, generate_uid(), "p\x00\x01\x1b"),
            (generate_uid(), "1.2.3/../../etc/passwd", HOSTILE + "\x00"),
            (generate_uid() + "\x00\x07", generate_uid(), "..\\..\\etc\\passwd"),
        ]
    ):
        ds = f.read_template(f.CT)
        put("hostile_ids_raw", f"raw-ids-{k}.dcm", _raw_dicom_with(ds, SeriesInstanceUID=series, SOPInstanceUID=sop, PatientID=patient))

    # a header that promises a huge image over a few bytes of pixels
    for k, size in enumerate((65535, 16000)):
        ds = f.read_template(f.CT)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Rows = ds.Columns = size
        ds.PixelData = b"\x00\x01" * 32
        put("huge_dims", f"huge-{k}.dcm", f.to_bytes(ds))
    return corpus
