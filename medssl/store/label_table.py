"""Parse the label table given to ``medssl ingest --labels TABLE`` (format: docs/labels.md).

YAML (``.yaml``/``.yml``)::

    structures: {1: liver, 2: kidney}      # or a CSV file with value and name columns
    classes: [normal, nodule]               # diagnosis vocabulary (optional)
    cases:
      - {image: ct/case01, mask: ct/case01_seg.nii.gz, classes: [nodule],
         boxes: [{label: lesion, min: [x0, y0, z0], max: [x1, y1, z1]}],
         split: val,                        # optional: a fixed train/val side (else hashed)
         modality: CT}                      # optional: for NIfTI/NRRD images, which carry none

CSV (``.csv``): columns ``image`` and optionally ``mask``, ``classes`` (``;``-separated) and ``modality``;
structure names come from a ``structures.csv`` beside the table, else ``label_<value>``.

Paths are relative to the table's folder and may not leave it (``..``); an absolute path
is taken as the user wrote it. The whole table is checked before anything is ingested and
every problem is a :class:`ConfigError` naming the row number, never the path (a folder
name may name a patient).
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from medssl.errors import ConfigError
from medssl.store.labels import Box
from medssl.types import SplitSide

NAME_PATTERN = re.compile(r"[A-Za-z0-9 _\-.()/,+']{1,64}")
MAX_LABEL_VALUE = 65535
_TABLE_KEYS = {"structures", "classes", "cases"}
_CASE_KEYS = {"image", "mask", "classes", "boxes", "split", "modality"}
_CSV_COLUMNS = {"image", "mask", "classes", "modality"}
MODALITY_PATTERN = re.compile(r"[A-Z]{2,4}")  # a DICOM Modality code: CT, MR, PT, ...
_VALUE_COLUMNS = ("value", "id", "label_value", "index", "label")
_NAME_COLUMNS = ("name", "structure", "structure_name", "label_name", "segment")


@dataclass(frozen=True)
class LabelCase:
    """One row of the table: an image and what is known about it."""

    row: int  # 1-based, as a person counts the cases
    image: Path
    mask: Path | None
    classes: tuple[str, ...]
    boxes: tuple[Box, ...]
    split: SplitSide | None = None  # a side the table fixes; None: the hashed split decides
    modality: str | None = None  # what a NIfTI/NRRD image is (it carries no modality); DICOM keeps its own


@dataclass(frozen=True)
class LabelTable:
    path: Path
    structures: dict[int, str] | None  # None: names are the mask's own (SEG labels, label_<v>)
    classes: tuple[str, ...] | None  # the diagnosis vocabulary, when the table gives one
    cases: tuple[LabelCase, ...]
    support_files: tuple[Path, ...] = ()  # the table and its structures CSV: never images

    def image_modalities(self) -> dict[str, str]:
        """Real path of each case image (file or folder) the table gives a modality -> that modality."""
        return {os.path.realpath(c.image): c.modality for c in self.cases if c.modality is not None}

    def non_images(self) -> set[str]:
        """Real paths of files that must not be ingested as images (masks, the table itself)."""
        paths = [self.path, *self.support_files, *(c.mask for c in self.cases if c.mask)]
        return {os.path.realpath(p) for p in paths}


def check_name(name: object, where: str) -> str:
    """A structure or class name: vocabulary, not PHI, but free text, so a narrow alphabet."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name)[:20] if isinstance(name, (int, float)) else f"of {len(str(name))} characters"
        raise ConfigError(
            f"{where}: name {shown} is not 1-64 characters of letters, digits, space and _-.()/,+'"
        )
    return name


def read_label_table(path: str | Path) -> LabelTable:
    """The table at ``path`` (YAML or CSV), checked whole; ConfigError on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--labels: the label table does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _read_yaml(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise ConfigError(f"--labels: a label table is .yaml, .yml or .csv, got '{suffix[:8]}'")


def _read_yaml(path: Path) -> LabelTable:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" near line {line + 1}" if line is not None else ""
        raise ConfigError(f"label table: not valid YAML{at} ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise ConfigError("label table: expected a mapping with a 'cases' list")
    unknown = set(doc) - _TABLE_KEYS
    if unknown:
        raise ConfigError(f"label table: unknown keys {sorted(map(str, unknown))[:5]}; expected {sorted(_TABLE_KEYS)}")
    support: list[Path] = []
    structures = doc.get("structures")
    if isinstance(structures, str):
        csv_path = _resolve(path.parent, structures, "structures", file=True)
        support.append(csv_path)
        structures = read_structures_csv(csv_path)
    elif structures is not None:
        structures = _structures_mapping(structures)
    vocab = doc.get("classes")
    if vocab is not None:
        vocab = _names(vocab, "classes")
        if len(set(vocab)) != len(vocab):
            raise ConfigError("label table: 'classes' lists a name twice")
    cases = []
    for index, raw in enumerate(doc["cases"], start=1):
        if not isinstance(raw, dict):
            raise ConfigError(f"label table case {index}: expected a mapping with 'image'")
        unknown = set(raw) - _CASE_KEYS
        if unknown:
            raise ConfigError(f"label table case {index}: unknown keys {sorted(map(str, unknown))[:5]}; expected {sorted(_CASE_KEYS)}")
        cases.append(_case(path.parent, index, raw.get("image"), raw.get("mask"), raw.get("classes") or [], raw.get("boxes") or [], raw.get("split"), raw.get("modality")))
    return _finish(path, structures, vocab, cases, support)


def _read_csv(path: Path) -> LabelTable:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = set(rows[0].keys()) if rows else set()
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"label table: not valid CSV ({type(exc).__name__})") from None
    if not rows or "image" not in fields or None in fields or not fields <= _CSV_COLUMNS:
        raise ConfigError("label table: a CSV table needs rows and the columns image[,mask][,classes][,modality] only")
    support: list[Path] = []
    structures = None
    beside = path.parent / "structures.csv"
    if beside.is_file() and beside.resolve() != path.resolve():
        support.append(beside)
        structures = read_structures_csv(beside)
    cases = []
    for index, row in enumerate(rows, start=1):
        classes = [c.strip() for c in (row.get("classes") or "").split(";") if c.strip()]
        cases.append(_case(path.parent, index, row.get("image"), row.get("mask") or None, classes, [], None, row.get("modality") or None))
    return _finish(path, structures, None, cases, support)


def read_structures_csv(path: Path) -> dict[int, str]:
    """``value -> name`` from a CSV whose columns are detected (value|id|..., name|structure|...)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"structures CSV unreadable ({type(exc).__name__})") from None
    header = {k.strip().lower(): k for k in (rows[0].keys() if rows else []) if k}
    value_col = next((header[c] for c in _VALUE_COLUMNS if c in header), None)
    name_col = next((header[c] for c in _NAME_COLUMNS if c in header), None)
    if value_col is None or name_col is None:
        raise ConfigError(f"structures CSV: need a value column ({'|'.join(_VALUE_COLUMNS)}) and a name column ({'|'.join(_NAME_COLUMNS)})")
    pairs = [((row.get(value_col) or "").strip(), (row.get(name_col) or "").strip()) for row in rows]
    return _structures_mapping(pairs, "structures CSV rows")


def _structures_mapping(raw: object, rows: str = "structures entries") -> dict[int, str]:
    """``{value: name}`` from a mapping or ``[(value, name), ...]`` rows (a CSV's, in order).

    One value given twice (``1`` and ``"01"``, or two CSV rows) is refused, naming both names
    when they differ: a label value has one name."""
    if isinstance(raw, dict):
        raw = list(raw.items())
    if not isinstance(raw, list) or not raw:
        raise ConfigError("label table: 'structures' must be a non-empty mapping value: name, or a CSV file")
    out: dict[int, str] = {}
    where: dict[int, int] = {}
    for index, (key, name) in enumerate(raw, start=1):
        try:
            value = int(str(key).strip())
        except ValueError:
            raise ConfigError(f"structures: value {str(key)[:10]!r} is not an integer") from None
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise ConfigError(f"structures: value {value} outside 1..{MAX_LABEL_VALUE} (0 is background)")
        name = check_name(name, f"structures value {value}")
        if value in out:
            both = f"'{out[value]}' and '{name}'" if out[value] != name else f"'{name}' twice"
            raise ConfigError(f"structures: label value {value} is named {both} ({rows} {where[value]} and {index}); one value, one name")
        out[value], where[value] = name, index
    if len(set(out.values())) != len(out):
        raise ConfigError("structures: two values share one name")
    return dict(sorted(out.items()))


def _names(raw: object, where: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of names")
    return tuple(check_name(n, where) for n in items)


def _case(folder: Path, index: int, image, mask, classes, boxes, split=None, modality=None) -> LabelCase:
    where = f"label table case {index}"
    if image is None or image == "":
        raise ConfigError(f"{where}: 'image' is required")
    if split is not None and split not in tuple(SplitSide):
        raise ConfigError(f"{where}: 'split' is {str(split)[:10]!r}; expected one of {', '.join(SplitSide)}")
    if isinstance(modality, str):
        modality = modality.strip().upper()
    if modality is not None and not (isinstance(modality, str) and MODALITY_PATTERN.fullmatch(modality)):
        raise ConfigError(f"{where}: 'modality' must be a DICOM modality code of 2-4 letters (CT, MR, PT, ...)")
    return LabelCase(
        row=index,
        image=_resolve(folder, image, f"{where} image"),
        mask=None if mask is None else _resolve(folder, mask, f"{where} mask", file=True),
        classes=tuple(dict.fromkeys(_names(classes, f"{where} classes"))),
        boxes=tuple(_box(b, f"{where} box {n}") for n, b in enumerate(_as_list(boxes, where), start=1)),
        split=None if split is None else SplitSide(split),
        modality=modality,
    )


def _as_list(raw, where: str) -> list:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'boxes' must be a list")
    return raw


def _box(raw, where: str) -> Box:
    if not isinstance(raw, dict) or set(raw) != {"label", "min", "max"}:
        raise ConfigError(f"{where}: expected {{label, min: [x, y, z], max: [x, y, z]}}")
    corners = []
    for key in ("min", "max"):
        value = raw[key]
        if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: '{key}' must be three numbers (RAS mm)")
        if not all(math.isfinite(v) for v in value):
            raise ConfigError(f"{where}: '{key}' holds a non-finite number")
        corners.append(tuple(float(v) for v in value))
    lo, hi = corners
    if not all(a < b for a, b in zip(lo, hi)):
        raise ConfigError(f"{where}: min {lo} must be below max {hi} on every axis")
    return Box(check_name(raw["label"], where), lo, hi)


def _resolve(folder: Path, raw, where: str, *, file: bool = False) -> Path:
    """A path of the table: absolute as written, relative ones inside the table's folder."""
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a path (text)")
    if "\x00" in raw:
        raise ConfigError(f"{where}: the path holds a NUL byte")
    given = Path(raw)
    if given.is_absolute():
        resolved = Path(os.path.normpath(given))
    else:
        base = os.path.normpath(os.path.abspath(folder))
        resolved = Path(os.path.normpath(os.path.join(base, raw)))
        if os.path.commonpath([base, str(resolved)]) != base:
            raise ConfigError(f"{where}: a relative path must stay inside the table's folder (write an absolute path to reach elsewhere)")
    if not resolved.exists():
        raise ConfigError(f"{where}: the path does not exist")
    if file and not resolved.is_file():
        raise ConfigError(f"{where}: expected a file (NIfTI, NRRD or DICOM SEG), got a folder")
    return resolved


def _finish(path: Path, structures, vocab, cases: list[LabelCase], support: list[Path]) -> LabelTable:
    seen: dict[str, int] = {}
    for case in cases:
        real = os.path.realpath(case.image)
        if real in seen:
            raise ConfigError(f"label table case {case.row}: same image as case {seen[real]}")
        seen[real] = case.row
        if vocab is not None:
            extra = [c for c in case.classes if c not in vocab]
            if extra:
                raise ConfigError(f"label table case {case.row}: class '{extra[0]}' is not in the table's 'classes'")
    masks = {os.path.realpath(c.mask) for c in cases if c.mask}
    for case in cases:
        if os.path.realpath(case.image) in masks:
            raise ConfigError(f"label table case {case.row}: its image is also given as a mask")
    return LabelTable(path.resolve(), structures, vocab, tuple(cases), tuple(p.resolve() for p in support))
