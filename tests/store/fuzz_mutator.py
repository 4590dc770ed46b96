"""Seeded mutants of real image files, for the ingest fuzz suite (issue 15).

Seeds are real files: scanner DICOM from the dcm_qa corpus (several vendors and transfer
syntaxes), pydicom's packaged test files, and a NIfTI and NRRD written by ``tools.phantom``.
Each mutant is one seed with one mutation, drawn from ``random.Random(seed, index)`` so
mutant ``i`` of a run is the same whatever else was drawn. Kinds:

- ``byte_flip``: 1-16 random bytes XORed with a random non-zero mask;
- ``truncate``: cut at a random offset;
- ``insert``: 1-64 random bytes inserted at a random offset;
- ``field``: a header field overwritten where the format puts it - a DICOM element's tag,
  VR, length or (for the image-describing elements) value; a NIfTI dim/pixdim/vox_offset/
  datatype/... field; an NRRD header line replaced, removed or duplicated;
- ``dup_chunk`` / ``drop_chunk``: a random span repeated in place / cut out;
- ``zip``: 1-3 mutants of the kinds above as members of one zip, the archive itself
  sometimes damaged.

A DICOM mutant first gets its own SOP instance and series UIDs (same length, so offsets
hold), so that each mutant is a unit of its own and every outcome names one mutant.
"""

from __future__ import annotations

import gzip
import io
import math
import random
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import data_element_generator

KINDS = ("byte_flip", "truncate", "insert", "field", "dup_chunk", "drop_chunk", "zip")
DICOM_QA = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_qa"
# (label, path under dicom_qa): small files of different vendors and transfer syntaxes
DICOM_QA_FILES = (
    ("ge_epi", "dcm_qa_nih/In/20180918GE/mr_0004/axial_epi_fmri_interleaved_i_to_s-00041.dcm"),
    ("philips_epi", "dcm_qa_philips/In/Magdeburg_2014/fmri/201_EPI_asc_CLEAR_0001_01.dcm"),
    ("philips_asl", "dcm_qa_philips_asl/In/Classic/401_3D_pCASL_6mm/0001.dcm"),
    ("siemens_enhanced", "dcm_qa_enh/In/Siemens/XA10/6_1.dcm"),
    ("siemens_rle", "dcm_qa_ts/In/4.dcm"),
    ("siemens_jpegls", "dcm_qa_ts/In/7.dcm"),
    ("siemens_j2k", "dcm_qa_ts/In/9.dcm"),
    ("siemens_bigendian", "dcm_qa_ts/In/3.dcm"),
)
PYDICOM_FILES = ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb_small_odd.dcm")
DEFLATED = "1.2.840.10008.1.2.1.99"  # deflated explicit VR little endian
LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
# elements that describe the pixels: their values are overwritten, not just their framing
IMAGE_TAGS = {0x00020010, 0x00180050, 0x00200032, 0x00200037, 0x00280002, 0x00280004, 0x00280006, 0x00280008,
              0x00280010, 0x00280011, 0x00280030, 0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00281052, 0x00281053}
# NIfTI-1 header fields: name -> (offset, struct code, count)
NIFTI_FIELDS = {"sizeof_hdr": (0, "i", 1), "dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1),
                "pixdim": (76, "f", 8), "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1),
                "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 6), "srow": (280, "f", 12), "magic": (344, "4s", 1)}
INT_EXTREMES = (0, -1, 1, 2, 3, 7, 8, 255, 1024, 32767, -32768)
FLOAT_EXTREMES = (0.0, -1.0, 1e-30, 1e9, 1e38, -1e38, math.nan, math.inf, -math.inf)
NRRD_VALUES = ("", "0", "-1", "nan", "inf", "1e38", "999999 999999 999999", "4294967296 2 2", "(nan,0,0) (0,1,0) (0,0,1)",
               "(1e38,0,0) (0,1e38,0) (0,0,1e38)", "none", "raw", "gzip", "bzip2", "big", "double", "block", "../../etc/passwd", "LIST", "\x00\xff")


@dataclass(frozen=True)
class Seed:
    label: str  # source label: vendor/transfer syntax, pydicom name, phantom format
    fmt: str  # "dicom" | "nifti" | "nrrd"
    data: bytes
    suffix: str  # file name ending of its mutants


@dataclass(frozen=True)
class Mutant:
    name: str  # file name in the batch folder
    data: bytes
    seed: str  # Seed.label (for a zip: its first member's)
    kind: str  # one of KINDS
    detail: str  # the field mutated, when kind == "field"
    members: tuple[tuple[str, bytes], ...] = ()  # (name, bytes) of each member, for a zip


def load_seeds(work: Path) -> list[Seed]:
    """Every seed that exists here: dcm_qa files (skipped where the corpus is absent), pydicom's, a phantom NIfTI/NRRD."""
    from pydicom.data import get_testdata_file

    from tools.phantom import make_ct_phantom, write_nifti, write_nrrd

    seeds = [Seed(f"dcm_qa:{label}", "dicom", (DICOM_QA / rel).read_bytes(), ".dcm") for label, rel in DICOM_QA_FILES if (DICOM_QA / rel).is_file()]
    for name in PYDICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            seeds.append(Seed(f"pydicom:{name}", "dicom", Path(path).read_bytes(), ".dcm"))
    phantom = make_ct_phantom((24, 20, 12), (1.5, 1.5, 3.0), seed=3, n_lesions=0)
    work.mkdir(parents=True, exist_ok=True)
    seeds.append(Seed("phantom:nifti", "nifti", write_nifti(phantom, work / "phantom.nii").read_bytes(), ".nii"))
    nrrd = write_nrrd(phantom, work / "phantom.nrrd").read_bytes()
    seeds.append(Seed("phantom:nrrd_gzip", "nrrd", nrrd, ".nrrd"))
    seeds.append(Seed("phantom:nrrd_raw", "nrrd", _raw_nrrd(nrrd), ".nrrd"))
    return seeds


def _raw_nrrd(gz_nrrd: bytes) -> bytes:
    head, sep, body = gz_nrrd.partition(b"\n\n")
    return head.replace(b"encoding: gzip", b"encoding: raw") + sep + gzip.decompress(body)


def make_mutants(seeds: list[Seed], start: int, count: int, seed: int) -> list[Mutant]:
    """Mutants ``start .. start+count-1`` of run ``seed``; mutant ``i`` depends only on ``(seed, i)``."""
    uids = _UidCache()
    return [_mutant(seeds, i, random.Random(f"{seed}:{i}"), uids) for i in range(start, start + count)]


def _mutant(seeds: list[Seed], index: int, rng: random.Random, uids: _UidCache) -> Mutant:
    kind = KINDS[index % len(KINDS)]
    if kind == "zip":
        return _zip_mutant(seeds, index, rng, uids)
    source = _pick(seeds, rng)
    data, detail = mutate(source, kind, rng, uids.unique(source, index * 4))
    name, suffix = f"m{index:06d}{source.suffix}", ""
    if source.fmt == "nifti" and rng.random() < 0.4:  # the same header damage behind gzip
        data, suffix = gzip.compress(data, mtime=0), ".gz"
    return Mutant(name + suffix, data, source.label, kind, detail)


def _pick(seeds: list[Seed], rng: random.Random) -> Seed:
    """DICOM seeds 60 %, NIfTI and NRRD 20 % each (they are fewer, and their headers are small)."""
    fmt = rng.choices(("dicom", "nifti", "nrrd"), weights=(3, 1, 1))[0]
    return rng.choice([s for s in seeds if s.fmt == fmt])


def _zip_mutant(seeds: list[Seed], index: int, rng: random.Random, uids: _UidCache) -> Mutant:
    buffer, members, first = io.BytesIO(), [], ""
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(rng.randint(1, 3)):
            source = _pick(seeds, rng)
            inner = rng.choice(KINDS[:-1])
            data, _ = mutate(source, inner, rng, uids.unique(source, index * 4 + n))
            member = f"d{n}/x{n}{source.suffix}"
            info = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))  # not "now": mutant i is a function of (seed, i)
            archive.writestr(info, data, compress_type=rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)))
            members.append((member, data))
            first = first or source.label
    data, detail = buffer.getvalue(), "archive intact"
    if rng.random() < 0.3:
        data, detail = _flip(bytearray(data), rng), "archive bytes flipped"
    return Mutant(f"m{index:06d}.zip", data, first, "zip", detail, tuple(members))


def mutate(source: Seed, kind: str, rng: random.Random, data: bytes | None = None) -> tuple[bytes, str]:
    """``source`` (or its ``data`` variant) with one mutation of ``kind``; returns (bytes, field detail)."""
    buf = bytearray(source.data if data is None else data)
    n = len(buf)
    if kind == "byte_flip":
        return _flip(buf, rng), ""
    if kind == "truncate":
        return bytes(buf[: rng.randrange(n)]), ""
    if kind == "insert":
        at = rng.randrange(n + 1)
        return bytes(buf[:at] + rng.randbytes(rng.randint(1, 64)) + buf[at:]), ""
    if kind in ("dup_chunk", "drop_chunk"):
        at = rng.randrange(n)
        size = rng.randint(1, max(1, min(4096, n - at)))
        chunk = buf[at : at + size]
        return bytes(buf[: at + size] + chunk + buf[at + size :] if kind == "dup_chunk" else buf[:at] + buf[at + size :]), ""
    if kind == "field":
        return {"dicom": _dicom_field, "nifti": _nifti_field, "nrrd": _nrrd_field}[source.fmt](buf, rng)
    raise ValueError(f"unknown mutation kind {kind!r}")


def _flip(buf: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 16)):
        buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
    return bytes(buf)


@dataclass(frozen=True)
class Element:
    tag: int
    vr: str | None
    header: int  # offset of the tag
    value: int  # offset of the value
    length: int  # declared length
    explicit: bool
    little: bool


def dicom_elements(data: bytes) -> list[Element]:
    """Top-level elements of a Part 10 file (meta group and dataset), with their byte offsets."""
    fp = io.BytesIO(data)
    fp.seek(132)
    found = [_element(raw, False, True) for raw in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)]
    syntax = next((data[e.value : e.value + e.length].rstrip(b"\x00 ").decode("ascii", "replace") for e in found if e.tag == 0x00020010), "")
    if syntax == DEFLATED:  # deflated: the dataset's bytes are not the file's
        return found
    implicit, little = syntax == "1.2.840.10008.1.2", syntax != "1.2.840.10008.1.2.2"
    try:
        for raw in data_element_generator(fp, implicit, little, defer_size=256):
            found.append(_element(raw, implicit, little))
    except Exception:  # noqa: BLE001, S110 - a seed's tail pydicom cannot walk: use the elements before it
        pass
    return found


def _element(raw, implicit: bool, little: bool) -> Element:
    vr = None if implicit else raw.VR
    size = 8 if implicit or vr not in LONG_HEADER_VRS else 12
    length = raw.length if raw.length != 0xFFFFFFFF else 0xFFFFFFFF
    return Element(int(raw.tag), vr, raw.value_tell - size, raw.value_tell, length, not implicit, little)


def _dicom_field(buf: bytearray, rng: random.Random) -> tuple[bytes, str]:
    elements = dicom_elements(bytes(buf))
    image = [e for e in elements if e.tag in IMAGE_TAGS and e.length != 0xFFFFFFFF]
    what = rng.choice(("value", "value", "length", "vr", "tag"))
    if what == "vr":
        elements = [e for e in elements if e.explicit] or elements
    elem = rng.choice(image if what == "value" and image else elements)
    order = "<" if elem.little else ">"
    if what == "value" and elem in image:
        value = _dicom_value(elem, rng)
        buf[elem.value : elem.value + elem.length] = value[: elem.length].ljust(elem.length, b" ")
        return bytes(buf), f"dicom value ({elem.tag >> 16:04X},{elem.tag & 0xFFFF:04X})"
    if what == "vr" and elem.explicit:
        buf[elem.header + 4 : elem.header + 6] = rng.choice((b"UN", b"SQ", b"OB", b"OW", b"US", b"UI", b"XX", b"\x00\x00", rng.randbytes(2)))
        return bytes(buf), "dicom VR"
    if what in ("length", "value"):
        long_form = not elem.explicit or (elem.vr in LONG_HEADER_VRS)
        at = elem.header + (4 if not elem.explicit else 8 if long_form else 6)
        width = 4 if long_form else 2
        limit = (1 << (8 * width)) - 1
        choices = (0, limit, limit - 1, elem.length + 1, max(elem.length - 1, 0), elem.length * 2, rng.randrange(limit + 1), 1 << 31)
        buf[at : at + width] = struct.pack(order + ("I" if width == 4 else "H"), min(rng.choice(choices), limit))
        return bytes(buf), "dicom length"
    new_tag = rng.choice((0x7FE00010, 0xFFFEE000, 0xFFFEE0DD, 0x00020010, 0x00080016, rng.getrandbits(32)))
    buf[elem.header : elem.header + 4] = struct.pack(order + "HH", new_tag >> 16, new_tag & 0xFFFF)
    return bytes(buf), "dicom tag"


def _dicom_value(elem: Element, rng: random.Random) -> bytes:
    if elem.tag == 0x00020010:  # transfer syntax: empty, unknown, or another real one
        return rng.choice((b"", b"\x00", b"1.2.3.4", b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.5"))
    if elem.vr in ("US", "SS") or (elem.vr is None and elem.length == 2):
        return struct.pack(("<" if elem.little else ">") + "H", rng.choice((0, 1, 3, 7, 8, 12, 16, 17, 32, 33, 64, 0x7FFF, 0xFFFF)))
    return rng.choice((b"", b"0", b"-1", b"nan", b"inf", b"1e308", b"-0\\0\\0", b"1\\0\\0\\0\\1\\0", b"0\\0\\0\\0\\0\\0", b"65535", b"YBR_FULL_422", b"PALETTE COLOR", rng.randbytes(8)))


def _nifti_field(buf: bytearray, rng: random.Random) -> tuple[bytes, str]:
    name = rng.choice(list(NIFTI_FIELDS))
    offset, code, count = NIFTI_FIELDS[name]
    slot = rng.randrange(count)
    if code == "4s":
        value = struct.pack("4s", rng.choice((b"n+1\x00", b"ni1\x00", b"n+2\x00", rng.randbytes(4))))
    elif code == "f":
        value = struct.pack("<f", rng.choice(FLOAT_EXTREMES + (352.0, 353.0, float(len(buf)), float(len(buf) - 4))))
    else:
        value = struct.pack("<" + code, rng.choice(INT_EXTREMES if code == "h" else (0, 348, 540, -1, 1 << 30)))
    at = offset + slot * struct.calcsize("<" + code)
    buf[at : at + len(value)] = value
    return bytes(buf), f"nifti {name}"


def _nrrd_field(buf: bytearray, rng: random.Random) -> tuple[bytes, str]:
    head, sep, body = bytes(buf).partition(b"\n\n")
    lines = head.split(b"\n")
    at = rng.choice([k for k, line in enumerate(lines) if not line.startswith(b"#")] or [0])
    field_name = lines[at].split(b":")[0].decode("latin-1")
    action = rng.choice(("value", "value", "drop", "duplicate"))
    if action == "drop":
        del lines[at]
    elif action == "duplicate":
        lines.insert(at, lines[at])
    else:
        key = lines[at].partition(b":")[0] or b"sizes"
        lines[at] = key + b": " + rng.choice(NRRD_VALUES).encode("latin-1")
    return b"\n".join(lines) + sep + body, f"nrrd {field_name} {action}"


class _UidCache:
    """Same-length replacements for a DICOM seed's SOP instance and series UIDs, one pair per mutant."""

    def __init__(self) -> None:
        self.uids: dict[str, tuple[str, ...]] = {}

    def unique(self, source: Seed, index: int) -> bytes | None:
        if source.fmt != "dicom":
            return None
        if source.label not in self.uids:
            ds = pydicom.dcmread(io.BytesIO(source.data), stop_before_pixels=True)
            self.uids[source.label] = tuple(str(ds[k].value) for k in ("SOPInstanceUID", "SeriesInstanceUID") if k in ds)
        data, new_uids = source.data, []
        for n, uid in enumerate(self.uids[source.label]):
            parts = uid.split(".")
            longest = max(range(len(parts)), key=lambda k: len(parts[k]))
            width = len(parts[longest]) - 1  # its longest component becomes a digit n + 1 and the index
            parts[longest] = f"{n + 1}{index % 10**width:0{width}d}"
            new_uids.append(".".join(parts))
            data = data.replace(uid.encode(), new_uids[-1].encode())
        if DEFLATED.encode() in source.data[:1024]:  # a deflated dataset: its UIDs are not in the file's bytes
            ds = pydicom.dcmread(io.BytesIO(source.data))
            ds.SOPInstanceUID, ds.SeriesInstanceUID = new_uids
            ds.file_meta.MediaStorageSOPInstanceUID = new_uids[0]
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            data = out.getvalue()
        return data
