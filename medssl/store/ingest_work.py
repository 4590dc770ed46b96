"""The work of ingest that runs in worker processes: scan a file, convert a unit.

Each function takes picklable inputs, touches only its own final paths (atomically) and
returns an :class:`Outcome` that the main process records in the manifest. Every failure
is an :class:`IngestError` turned into a ``rejected`` outcome; nothing escapes to crash the
run, and no message carries an identifier.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medssl.atomic import atomic_write_bytes
from medssl.deid import PROFILE_EDITION, DeidOptions, Pseudonymizer, burned_in_risk, deidentify
from medssl.errors import IngestError
from medssl.io.dicom_read import lenient_reading, tag_text
from medssl.io.dicom_scan import SliceRecord, scan_file
from medssl.io.dicom_stack import Stack
from medssl.io.dicom_volume import read_stack
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.io.sources import FileFormat, SourceItem, sniff_format
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.store.quarantine import quarantine
from medssl.types import GeometryKind, IrregularPolicy, RejectReason, SourceKind


@dataclass(frozen=True)
class WorkContext:
    """Everything a worker needs, sent once per process."""

    store: str
    key: bytes = field(repr=False)
    deid: DeidOptions
    irregular: IrregularPolicy
    allow_burned_in: bool
    max_bytes: int
    volume_modality: str | None = None
    skip_localizers: bool = False


@dataclass
class Outcome:
    kind: str  # "volume" | "rejected" | "skipped"
    source_ref: str
    unit: str
    row: dict | None = None
    code: str = ""
    message: str = ""
    quarantine_path: str | None = None


@dataclass
class Scan:
    item: SourceItem
    fmt: FileFormat
    records: list[SliceRecord] = field(default_factory=list)
    sha256: str = ""
    error: IngestError | None = None


_CTX: WorkContext | None = None
_PSEUDO: Pseudonymizer | None = None


def init_worker(ctx: WorkContext) -> None:
    global _CTX, _PSEUDO
    _CTX, _PSEUDO = ctx, Pseudonymizer(ctx.key)


def source_ref(pseudo: Pseudonymizer, item: SourceItem) -> str:
    """Opaque, stable reference of a source file (its location, keyed)."""
    return pseudo.token(f"{item.path}\0{item.member or ''}", "source")


def volume_id_of_stack(pseudo: Pseudonymizer, stack: Stack) -> str:
    """The volume id a DICOM stack is stored under (keyed, stable across runs)."""
    return pseudo.token(stack.identity(), "volume")


def volume_id_of_file(pseudo: Pseudonymizer, sha256: str) -> str:
    """The volume id of a NIfTI/NRRD file: keyed digest of its bytes, wherever it lies."""
    return pseudo.token(f"file:{sha256}", "volume")


def item_key(item: SourceItem) -> tuple[str, str]:
    """One file however a source spells its path (for de-duplication and look-ups)."""
    return os.path.realpath(item.path), item.member or ""


def scan_item(item: SourceItem) -> Scan:
    try:
        data = item.read_bytes(_CTX.max_bytes)
        fmt = sniff_format(data[:352], item.suffix())
        if fmt == FileFormat.DICOM:
            return Scan(item, fmt, records=scan_file(item, data))
        if fmt in (FileFormat.NIFTI, FileFormat.NRRD):
            return Scan(item, fmt, sha256=hashlib.sha256(data).hexdigest())
        raise IngestError(RejectReason.NOT_AN_IMAGE, "not DICOM, NIfTI or NRRD (content sniffed, name ignored)")
    except IngestError as err:
        return Scan(item, FileFormat.UNKNOWN, error=err)
    except MemoryError:
        return Scan(item, FileFormat.UNKNOWN, error=IngestError(RejectReason.TOO_LARGE, "file does not fit in memory"))
    except OSError as exc:  # scanning only reads: this is the input's file failing, not the store
        return Scan(item, FileFormat.UNKNOWN, error=IngestError(RejectReason.UNREADABLE, f"file cannot be read ({type(exc).__name__})"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bug or a panicking parser must not stop the run
        return Scan(item, FileFormat.UNKNOWN, error=IngestError(RejectReason.INTERNAL, f"unexpected {type(exc).__name__} while scanning"))


def reject_file(item: SourceItem, err: IngestError) -> Outcome:
    """A file refused before it formed a unit: a row only (nothing of it could be kept de-identified,
    and a folder per refused file made a zip of n junk members cost n folders)."""
    return Outcome("rejected", source_ref(_PSEUDO, item), "file", code=str(err.code), message=err.message)


def convert_stack(stack: Stack, volume_id: str, source_kind: SourceKind, digest: str) -> Outcome:
    """One DICOM stack -> volume + de-identified header, or a quarantined refusal."""
    ref = source_ref(_PSEUDO, stack.first.item)

    def work() -> dict:
        _check_policy(stack)
        volume, header = read_stack(stack, _read)
        try:  # header values are parsed lazily and leniently: what cannot be kept is dropped, by tag
            with lenient_reading():
                deid_header = _deid_header(header)
                meta = _dicom_meta(deid_header, header, stack)
                header_json, dropped = _header_json(deid_header)
                if dropped:
                    meta["deid"]["dropped_invalid_values"] = dropped
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise IngestError(RejectReason.MALFORMED, f"header element unreadable ({type(exc).__name__})") from None
        volume_meta = {"geometry": str(volume.meta.get("geometry", "patient")), "frames": volume.meta.get("frames"), "scaling": volume.meta.get("scaling")}
        return _write(volume_id, volume, source_kind, ref, {**meta, **volume_meta, "source_digest": digest}, header_json)

    return _guarded(ref, volume_id, sorted({r.item for r in stack.records}), work)


def convert_file(item: SourceItem, fmt: FileFormat, volume_id: str, modality: str | None = None) -> Outcome:
    """A NIfTI or NRRD file: one volume, header rebuilt from scratch (nothing carried over);
    ``modality``: what the label table says it is, else ``--volume-modality``, else unknown."""
    ref = source_ref(_PSEUDO, item)

    def work() -> dict:
        volume = (read_nifti if fmt == FileFormat.NIFTI else read_nrrd)(_read(item), max_bytes=_CTX.max_bytes)
        kind = SourceKind.NIFTI if fmt == FileFormat.NIFTI else SourceKind.NRRD
        deid = {"method": "header rebuilt from array and affine; descrip, aux_file, intent_name and extensions dropped"}
        meta = {"deid": deid, "n_images": 1, "source_digest": volume_id, "modality": modality or _CTX.volume_modality, "scaling": volume.meta.get("scaling"),
                "geometry": str(GeometryKind.NONE if any(c.startswith("no_qform_sform") for c in volume.corrections) else GeometryKind.PATIENT)}
        return _write(volume_id, volume, kind, ref, meta, None)

    return _guarded(ref, volume_id, [], work)


def _guarded(ref: str, unit: str, items: list[SourceItem], work) -> Outcome:
    """Run ``work`` (which returns a manifest row); every failure becomes a refusal."""
    try:
        return Outcome("volume", ref, unit, row=work())
    except IngestError as err:
        qpath = quarantine(Path(_CTX.store), unit, err, items=items, read_bytes=_read, pseudo=_PSEUDO, options=_CTX.deid)
        return Outcome("rejected", ref, unit, code=str(err.code), message=err.message, quarantine_path=qpath)
    except MemoryError:
        return Outcome("rejected", ref, unit, code=RejectReason.TOO_LARGE, message="volume does not fit in memory")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bug or a panicking decoder must not stop the run
        return Outcome("rejected", ref, unit, code=RejectReason.INTERNAL, message=f"unexpected {type(exc).__name__} while converting")


def _read(item: SourceItem) -> bytes:
    return item.read_bytes(_CTX.max_bytes)


def _check_policy(stack: Stack) -> None:
    first = stack.first
    if _CTX.skip_localizers and first.split_key.localizer:
        raise IngestError(RejectReason.LOCALIZER_SKIPPED, "localizer/scout image skipped (--skip-localizers)")
    probe = Dataset()
    probe.Modality = first.modality
    if first.burned_in:
        probe.BurnedInAnnotation = first.burned_in
    if not _CTX.allow_burned_in and burned_in_risk(probe):
        why = "BurnedInAnnotation is YES" if first.burned_in == "YES" else f"BurnedInAnnotation absent for modality {first.modality}"
        raise IngestError(RejectReason.BURNED_IN, f"{why}: pixels may carry identifiers (pass --allow-burned-in after review)")
    if stack.irregularity is not None and _CTX.irregular == IrregularPolicy.REJECT:
        raise IngestError(stack.irregularity, f"{stack.detail}; pass --irregular resample to resample onto a regular grid")


def _header_json(ds: Dataset) -> tuple[bytes, list[str]]:
    """The de-identified header as DICOM JSON; an element whose value cannot be encoded is left out.

    (Kept elements with values that break their VR, e.g. text in a DS, cannot be written as
    JSON numbers; the volume does not depend on them, so they are dropped, not the series.)
    """
    try:
        whole = ds.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=_drop_bulk)
    except Exception:  # noqa: BLE001 - an invalid value somewhere: encode element by element below
        whole = None
    if whole is not None:
        return json.dumps(whole, sort_keys=True).encode(), []
    out: dict = {}
    dropped: list[str] = []
    for elem in list(ds):
        try:
            single = Dataset()
            single.add(elem)
            out.update(single.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=_drop_bulk))
        except Exception:  # noqa: BLE001 - named by tag only, never by value
            dropped.append(tag_text(elem.tag))
    return json.dumps(out, sort_keys=True).encode(), dropped


def _deid_header(header: Dataset) -> Dataset:
    """A de-identified copy of the first image's header, without its pixels."""
    ds = Dataset()
    ds.file_meta = copy.deepcopy(header.file_meta) if hasattr(header, "file_meta") else Dataset()
    drop_private = not _CTX.deid.keep_private  # the profile removes every private element then: skip them unread
    for raw in header.elements():  # raw elements: nothing is converted before it is chosen
        group = raw.tag >> 16
        if group == 0x7FE0 or (drop_private and group % 2 == 1):
            continue
        ds.add(copy.deepcopy(header[raw.tag]))  # deep copies: deidentify edits in place, the original must stay intact
    return deidentify(ds, _PSEUDO, _CTX.deid)


def _dicom_meta(deid: Dataset, original: Dataset, stack: Stack) -> dict:
    def num(keyword):
        try:
            value = deid.get(keyword)
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    first = stack.first
    return {
        "modality": first.modality,
        "body_part": _text(deid.get("BodyPartExamined")),
        "patient": _PSEUDO.token(first.patient_id, "patient"),
        "study": _PSEUDO.token(first.study_uid, "study"),
        "series": _PSEUDO.token(first.series_uid, "series"),
        "n_images": len(stack.records) * max(first.mosaic_tiles, 1),
        "slice_thickness": num("SliceThickness") or first.slice_thickness,
        "kvp": num("KVP"),
        "field_strength": num("MagneticFieldStrength"),
        "echo_time": num("EchoTime"),
        "repetition_time": num("RepetitionTime"),
        "manufacturer": _text(deid.get("Manufacturer")),
        "model": _text(deid.get("ManufacturerModelName")),
        "kernel": _text(deid.get("ConvolutionKernel")),
        "contrast": int(bool(original.get("ContrastBolusAgent"))),
        "deid": {"method": str(deid.get("DeidentificationMethod", "")), "profile": "DICOM PS3.15 E.1-1 basic", "edition": PROFILE_EDITION},
    }


def _text(value) -> str | None:
    """A kept technical text value (possibly multi-valued) as one string, or None."""
    if value is None:
        return None
    parts = [str(v) for v in value] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [str(value)]
    joined = "\\".join(p for p in parts if p)
    return joined or None


def _write(volume_id: str, volume: Volume, kind: SourceKind, ref: str, meta: dict, header_json: bytes | None) -> dict:
    store = Path(_CTX.store)
    rel = f"volumes/{volume_id}.nii.gz"
    data = nifti_gz_bytes(volume)
    header_rel = None
    if header_json is not None:
        header_rel = f"volumes/{volume_id}.dicom.json"
        atomic_write_bytes(store / header_rel, header_json)
    atomic_write_bytes(store / rel, data)
    return {
        "volume_id": volume_id,
        "path": rel,
        "header_path": header_rel,
        "ndim": volume.array.ndim,
        "shape": list(volume.array.shape),
        "spacing": [round(v, 6) for v in volume.spacing],
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "axcodes": volume.axcodes,
        "dtype": str(volume.array.dtype),
        "sha256": hashlib.sha256(data).hexdigest(),
        "nbytes": len(data),
        "source_kind": str(kind),
        "source_ref": ref,
        "corrections": list(volume.corrections),
        **meta,
    }


def _drop_bulk(_elem) -> str:
    return ""


def reject_records(records: list[SliceRecord], err: IngestError, volume_id: str) -> Outcome:
    """A group that could not even form a stack (duplicates, bad orientation): quarantined whole."""
    ref = source_ref(_PSEUDO, records[0].item)
    items = sorted({r.item for r in records})
    qpath = quarantine(Path(_CTX.store), volume_id, err, items=items, read_bytes=_read, pseudo=_PSEUDO, options=_CTX.deid)
    return Outcome("rejected", ref, volume_id, code=str(err.code), message=err.message, quarantine_path=qpath)
