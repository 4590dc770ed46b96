"""What tells the images of one series apart: volumes never merged, frames of a 4D volume.

Two kinds of difference, as dcm2niix draws them:

- :class:`SplitKey` — images that must never share a volume: another echo, another image
  component (magnitude, phase, real, imaginary, a derived map), another stack, a localizer.
- :class:`FrameParams` — repeated acquisitions of one stack (fMRI time points, diffusion
  directions, ASL label/control pairs): the frames of one 4D volume, ordered by
  :attr:`SliceInfo.frame_order` at each slice position, with their b-value, b-vector and
  time kept for the manifest.

Vendor private elements are read only where the standard has no element (classic
single-frame files): Siemens (0019,100C/100E), GE (0043,1039), Philips (2001,1003) and
(2005,10B0-B2) for diffusion; Philips (2005,100E) for the precise floating-point scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medssl.io.dicom_read import integer, lenient_reading, number

COMPONENTS = {"M": "M", "MAGNITUDE": "M", "P": "P", "PHASE": "P", "R": "R", "REAL": "R", "I": "I", "IMAGINARY": "I"}


@dataclass(frozen=True)
class SplitKey:
    """Images differing in any field go to different volumes."""

    echo: float = 0.0  # echo number (classic) or effective echo time (enhanced)
    component: str = ""  # M, P, R, I or a derived map's name (FIELD_MAP, ADC, ...)
    stack: str = ""  # enhanced StackID
    localizer: bool = False


@dataclass(frozen=True)
class FrameParams:
    """Per-frame parameters of a 4D volume (manifest column ``frames``); None where unknown.

    b_vector: unit gradient direction in DICOM patient coordinates (LPS), as the scanner
    wrote it; time_s: seconds since the volume's first frame; channel: R/G/B of a colour image.
    """

    b_value: float | None = None
    b_vector: tuple[float, float, float] | None = None
    time_s: float | None = None
    temporal_position: int | None = None
    channel: str | None = None


@dataclass(frozen=True)
class SliceInfo:
    """Frame-level facts of one image, read once while scanning."""

    split: SplitKey
    frame_order: tuple  # sorts the images at one slice position into frames
    b_value: float | None = None
    b_vector: tuple[float, float, float] | None = None
    seconds: float | None = None  # time of day, only ever used as a difference
    temporal_position: int | None = None
    repetition_ms: float | None = None  # RepetitionTime: frame interval when acquisition times are equal


def image_component(values) -> str:
    """Magnitude/phase/real/imaginary (or a derived map) from ImageType / FrameType values."""
    upper = [str(v).strip().upper() for v in (values or [])]
    for value in upper[2:]:
        if value in COMPONENTS:
            return COMPONENTS[value]
    for value in upper[2:]:
        if value.startswith(("P_", "R_", "I_")) and len(value) > 2:  # Philips P_FFE, R_SE, ...
            return value[0]
    return ""


def classic_info(ds: Dataset) -> SliceInfo:
    """Split key and frame facts of a single-frame image."""
    with lenient_reading():
        image_type = list(ds.get("ImageType") or [])
        b_value = _first_number(ds, "DiffusionBValue", (0x0019100C, "SIEMENS MR HEADER"), (0x00431039, "GEMS_PARM_01"), (0x20011003, "Philips Imaging DD 001"))
        b_vector = _direction(ds)
        component = image_component(image_type)
        if not component and str(ds.get("ComplexImageComponent", "")).upper() in COMPONENTS:
            component = COMPONENTS[str(ds.ComplexImageComponent).upper()]
        split = SplitKey(
            echo=number(ds.get("EchoNumbers"), 0.0) or number(ds.get("EchoTime"), 0.0),
            component=component,
            localizer="LOCALIZER" in [str(v).upper() for v in image_type],
        )
        temporal = integer(ds.get("TemporalPositionIdentifier"), 0) or None
        seconds = _seconds(ds.get("AcquisitionTime")) if "AcquisitionTime" in ds else None
        order = (
            temporal or 0,
            integer(ds.get("AcquisitionNumber"), 0),
            number(ds.get("TriggerTime"), 0.0),
            seconds if seconds is not None else 0.0,
            integer(ds.get("InstanceNumber"), 0),
        )
    return SliceInfo(split, order, b_value, b_vector, seconds, temporal, number(ds.get("RepetitionTime"), None))


def enhanced_info(item, content: Dataset, index: int) -> SliceInfo:
    """Split key and frame facts of frame ``index`` of an enhanced multi-frame object.

    ``item(sequence, keyword)`` looks a value up in the frame's functional groups, then the
    shared ones; ``content`` is the frame's FrameContentSequence item.
    """
    frame_type = item("MRImageFrameTypeSequence", "FrameType") or item("CTImageFrameTypeSequence", "FrameType") or []
    component = str(item("MRImageFrameTypeSequence", "ComplexImageComponent") or "").upper()
    derived = str(frame_type[3]).upper() if len(frame_type) > 3 else ""
    split = SplitKey(
        echo=number(item("MREchoSequence", "EffectiveEchoTime"), 0.0),
        component=COMPONENTS.get(component, component) + (f":{derived}" if derived and derived not in COMPONENTS else ""),
        stack=str(content.get("StackID", "")),
    )
    b_value = number(item("MRDiffusionSequence", "DiffusionBValue"), None)
    gradient = item("MRDiffusionSequence", "DiffusionGradientDirectionSequence")
    b_vector = None
    if gradient:
        vec = gradient[0].get("DiffusionGradientOrientation")
        b_vector = _unit(vec) if vec is not None else None
    temporal = integer(content.get("TemporalPositionIndex"), 0) or None
    seconds = _seconds_dt(content.get("FrameAcquisitionDateTime"))
    dims = tuple(integer(v) for v in (content.get("DimensionIndexValues") or []))
    order = (temporal or 0, seconds if seconds is not None else 0.0, dims, index)
    return SliceInfo(split, order, b_value, b_vector, seconds, temporal)


def philips_scale_slope(ds: Dataset, *, nested: bool = False) -> float | None:
    """Philips MR Scale Slope (private block "Philips MR Imaging DD 001", element 0x0E), else None.

    ``nested``: also look one level into Philips private sequences (group 2005), where
    enhanced objects keep it per frame ((2005,140F) or (2005,100F) in a functional group).
    """
    value = _philips_slope_here(ds)
    if value is None and nested:
        for elem in ds.group_dataset(0x2005) if hasattr(ds, "group_dataset") else []:
            if elem.VR == "SQ" and len(elem.value):
                value = _philips_slope_here(elem.value[0])
                if value is not None:
                    break
    return value


def _philips_slope_here(ds: Dataset) -> float | None:
    for block in range(0x10, 0x100):
        creator = ds.get((0x2005, block))
        if creator is None:
            if block > 0x20:
                break
            continue
        if str(creator.value).strip().upper() == "PHILIPS MR IMAGING DD 001":
            elem = ds.get((0x2005, block << 8 | 0x0E))
            scale = number(elem.value, None) if elem is not None else None
            return scale if scale else None
    return None


def _private(ds: Dataset, tag: int, creator: str):
    block = Tag(tag).group, (Tag(tag).element >> 8) & 0xFF
    owner = ds.get((block[0], block[1]))
    if owner is None or str(owner.value).strip().upper() != creator.upper():
        return None
    elem = ds.get(tag)
    return None if elem is None else elem.value


def _first_number(ds: Dataset, keyword: str, *private: tuple[int, str]) -> float | None:
    value = number(ds.get(keyword), None) if keyword in ds else None
    for tag, creator in private:
        if value is not None:
            break
        raw = _private(ds, tag, creator)
        if raw is None:
            continue
        first = raw[0] if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else raw
        if isinstance(first, bytes):
            first = first.split(b"\\")[0].decode("ascii", "replace")
        value = number(first, None)
        if value is not None and tag == 0x00431039 and value >= 1e9:  # GE stores b + 1e9 * flags
            value = value % 1e9
    return value


def _direction(ds: Dataset) -> tuple[float, float, float] | None:
    if "DiffusionGradientOrientation" in ds:
        return _unit(ds.DiffusionGradientOrientation)
    siemens = _private(ds, 0x0019100E, "SIEMENS MR HEADER")
    if siemens is not None:
        return _unit(siemens)
    vec = [ds.get(t) for t in (0x200510B0, 0x200510B1, 0x200510B2)]
    if all(v is not None for v in vec) and str(ds.get("Manufacturer", "")).upper().startswith("PHILIPS"):
        rl, ap, fh = (number(v.value, 0.0) for v in vec)
        return _unit((rl, ap, fh))  # Philips (RL, AP, FH) runs along patient L, P, H: LPS
    ge = [_private(ds, t, "GEMS_ACQU_01") for t in (0x001910BB, 0x001910BC, 0x001910BD)]
    if all(v is not None for v in ge) and "ImageOrientationPatient" in ds:
        return _ge_direction([number(v, None) for v in ge], ds.ImageOrientationPatient)
    return None


def _ge_direction(logical: list, iop) -> tuple[float, float, float] | None:
    """GE writes the gradient in its logical frame (0019,10BB-BD): along the image's rows, columns
    and slice normal with the first two negated. Turned into patient LPS here; on the corpus's GE
    tensor series this equals dcm2niix's .bvec to 1e-7 (tests/io/test_conformance_real.py)."""
    if None in logical:
        return None
    try:
        row, col = [float(v) for v in iop[:3]], [float(v) for v in iop[3:6]]
    except (TypeError, ValueError, IndexError):
        return None
    normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    gx, gy, gz = logical
    if gx == gy == gz == 0:
        return None
    return _unit([-gx * r - gy * c + gz * n for r, c, n in zip(row, col, normal)])


def _unit(values) -> tuple[float, float, float] | None:
    try:
        vec = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if len(vec) != 3:
        return None
    norm = sum(v * v for v in vec) ** 0.5
    return tuple(round(v / norm, 6) for v in vec) if norm > 1e-6 else None


def _seconds(value) -> float | None:
    """HHMMSS.frac as seconds since midnight (only differences are ever kept)."""
    text = str(value or "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _seconds_dt(value) -> float | None:
    """A DT's time part in seconds (YYYYMMDDHHMMSS.frac); None when absent."""
    text = str(value or "").strip()
    return _seconds(text[8:].split("+")[0].split("-")[0]) if len(text) > 8 else None
