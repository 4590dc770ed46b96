"""One prediction's input: the volume behind uploaded files, read by the ingest readers.

``read_input(paths)`` accepts DICOM files, a folder or a zip of them, or one NIfTI/NRRD file,
and goes through exactly the code ``medssl ingest`` uses: ``medssl.io.sources`` enumerates
files (unsafe zip names, zip bombs and oversized members refused), the content is sniffed
(never the name), DICOM headers go ``scan_file`` -> ``build_stacks`` -> ``read_stack`` and
NIfTI/NRRD through the header-checking readers, so geometry comes out as a canonical RAS+
:class:`~medssl.io.volume.Volume` with its world affine.

The source DICOM datasets (headers only, no pixels) are kept in memory, only for the SEG
and SR writers (docs/identifiers.md); nothing here writes, logs or raises an identifier:
every failure is an :class:`InputError` whose ``code`` is a ``RejectReason`` and whose
message names files by their position ("file 3 of 120"), never by name.

:class:`Grid` maps positions on the model's (preprocessed, possibly padded) grid back to the
input's world coordinates: both grids span the same field of view. ``InputVolume.native``
(:class:`~medssl.inference.native_grid.NativeGrid`) is the input's own voxel order, on which
label maps are written (``None`` when it cannot be recovered exactly: then the canonical grid).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from medssl.errors import IngestError
from medssl.inference.native_grid import (
    NativeGrid,
    dicom_native_grid,
    nifti_native_grid,
    nrrd_native_grid,
)
from medssl.inference.predictor import InputError
from medssl.io.dicom_scan import SliceRecord, read_dataset, scan_file
from medssl.io.dicom_stack import Stack, build_stacks
from medssl.io.dicom_volume import read_stack
from medssl.io.nifti import read_nifti, read_nrrd
from medssl.io.sources import BadItem, FileFormat, SourceItem, iter_source_items, sniff_format
from medssl.io.volume import Volume
from medssl.types import PathLike, RejectReason

log = logging.getLogger("medssl.predict")
MAX_INPUT_FILES = 5000  # a CT series has hundreds of slices; tens of thousands is not one series
MAX_INPUT_BYTES = 4 << 30  # all files of one upload together


def input_error(code: RejectReason | str, message: str) -> InputError:
    """An :class:`InputError` carrying a reason ``code`` (``err.code``) and ``[code] message``."""
    err = InputError(f"[{code}] {message}")
    err.code = str(code)  # type: ignore[attr-defined]
    return err


@dataclass
class InputVolume:
    """The uploaded volume and what the writers need to refer back to it.

    volume: canonical RAS+ volume (``array [X, Y, Z]``, ``affine`` voxel -> RAS mm);
    modality: DICOM Modality (``"CT"``, ``"MR"``...) or ``None`` for NIfTI/NRRD;
    kind: ``"dicom"``, ``"nifti"`` or ``"nrrd"``;
    source_datasets: the series' headers in stack order (DICOM only; kept in memory only);
    n_images: images (slices or frames) the volume was built from;
    native: the input's own voxel grid (NIfTI/NRRD: the file's array order; DICOM: columns,
    rows, slices in stack order), or None when it could not be recovered exactly.
    """

    volume: Volume
    modality: str | None
    kind: str
    source_datasets: list[Dataset] | None = field(default=None, repr=False)
    n_images: int = 1
    native: NativeGrid | None = field(default=None, repr=False)

    @property
    def is_dicom(self) -> bool:
        return self.kind == "dicom"


@dataclass(frozen=True)
class Grid:
    """How the preprocessed grid lies on the input: same field of view, other voxel counts.

    affine: input voxel -> RAS mm; input_shape ``(X, Y, Z)``; shape: the (possibly padded)
    model grid; valid: its unpadded part (``shape`` when nothing was padded).
    """

    affine: np.ndarray
    input_shape: tuple[int, ...]
    shape: tuple[int, ...]
    valid: tuple[int, ...] | None = None

    def to_world(self, edges: np.ndarray) -> np.ndarray:
        """Voxel-edge coordinates ``[N, 3]`` of the model grid (voxel i spans ``[i, i+1)``)
        -> RAS mm ``[N, 3]``."""
        valid = np.asarray(self.valid or self.shape, dtype=float)
        edges = np.clip(np.asarray(edges, dtype=float), 0.0, valid)
        centres = edges * (np.asarray(self.input_shape) / valid) - 0.5  # input voxel indices
        return centres @ self.affine[:3, :3].T + self.affine[:3, 3]


def read_input(
    paths: Sequence[PathLike],
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    max_files: int = MAX_INPUT_FILES,
    allow_irregular: bool = False,
) -> InputVolume:
    """The one volume behind ``paths`` (files, folders or zip files).

    Args:
        max_bytes: bound on the bytes of all files together (and on any one volume).
        max_files: bound on the number of files (zip members count one each).
        allow_irregular: resample stacks with missing slices, uneven spacing or gantry tilt
            onto a regular grid (as ``ingest --irregular resample``) instead of refusing them.

    Raises:
        InputError: with ``code`` a :class:`~medssl.types.RejectReason` value: no readable
            file, a file that is not DICOM/NIfTI/NRRD, truncated or malformed data, several
            image series, a NIfTI mixed with other files, an irregular stack.
    """
    items = _items(paths, max_files)
    cache: dict[SourceItem, bytes] = {}
    records: list[SliceRecord] = []
    total = 0
    for index, item in enumerate(items):
        where = f"file {index + 1} of {len(items)}"
        try:
            data = item.read_bytes(max_bytes)
        except IngestError as err:
            raise input_error(err.code, f"{where}: {err.message}") from None
        total += len(data)
        if total > max_bytes:
            raise input_error(RejectReason.TOO_LARGE, f"the upload exceeds {max_bytes} bytes")
        fmt = sniff_format(data[:352], item.suffix())
        if fmt in (FileFormat.NIFTI, FileFormat.NRRD):
            if len(items) != 1:
                raise input_error(
                    RejectReason.UNSUPPORTED,
                    f"{where} is {fmt.value.upper()} among {len(items)} files; send one "
                    "NIfTI/NRRD file alone",
                )
            return _read_volume_file(data, fmt, max_bytes)
        if fmt != FileFormat.DICOM:
            raise input_error(
                RejectReason.NOT_AN_IMAGE, f"{where}: not DICOM, NIfTI or NRRD (content sniffed)"
            )
        try:
            records.extend(scan_file(item, data))
        except IngestError as err:
            raise input_error(err.code, f"{where}: {err.message}") from None
        except Exception as exc:  # noqa: BLE001 - a reader bug on odd input is a 4xx, not a 500
            raise _undecodable(where, exc) from None
        cache[item] = data
    return _read_dicom(records, cache, allow_irregular)


def _items(paths: Sequence[PathLike], max_files: int) -> list[SourceItem]:
    if not paths:
        raise input_error(RejectReason.NOT_AN_IMAGE, "no input files")
    items: list[SourceItem] = []
    for index, path in enumerate(paths):
        try:
            entries = list(iter_source_items(path))
        except FileNotFoundError:
            raise input_error(
                RejectReason.NOT_AN_IMAGE, f"input {index + 1} of {len(paths)} does not exist"
            ) from None
        for entry in entries:
            if isinstance(entry, BadItem):
                raise input_error(entry.error.code, f"input {index + 1}: {entry.error.message}")
            items.append(entry)
            if len(items) > max_files:
                raise input_error(
                    RejectReason.TOO_LARGE, f"the upload holds more than {max_files} files"
                )
    if not items:
        raise input_error(RejectReason.NOT_AN_IMAGE, "the upload holds no file")
    return items


def _read_volume_file(data: bytes, fmt: FileFormat, max_bytes: int) -> InputVolume:
    reader = read_nifti if fmt == FileFormat.NIFTI else read_nrrd
    try:
        volume = reader(data, max_bytes=max_bytes)
    except IngestError as err:
        raise input_error(err.code, f"{fmt.value.upper()} file: {err.message}") from None
    except MemoryError:
        raise input_error(RejectReason.TOO_LARGE, "the volume does not fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - a reader bug on odd input is a 4xx, not a 500
        raise _undecodable(f"{fmt.value.upper()} file", exc) from None
    if volume.array.ndim == 4:
        raise input_error(
            RejectReason.UNSUPPORTED,
            f"{fmt.value.upper()} file holds a 4D series of {volume.array.shape[3]} frames; this model "
            "reads one 3D volume: send one frame",
        )
    try:  # the reader accepted the file: its header parses; a grid that fails its check is None
        native = (nifti_native_grid if fmt == FileFormat.NIFTI else nrrd_native_grid)(data, volume)
    except Exception:  # noqa: BLE001 - best effort: the caller falls back to the canonical grid
        native = None
    return InputVolume(volume, None, fmt.value, native=native)


def _read_dicom(
    records: list[SliceRecord], cache: dict[SourceItem, bytes], allow_irregular: bool
) -> InputVolume:
    if not records:
        raise input_error(RejectReason.NO_PIXELS, "the DICOM files hold no image (DICOMDIR only?)")
    stacks, failed = build_stacks(records)
    series = {r.series_uid for r in records}
    if len(series) > 1:
        raise input_error(
            RejectReason.UNSUPPORTED, f"the upload holds {len(series)} image series; send one"
        )
    if failed:
        group, err = failed[0]
        raise input_error(err.code, f"the series ({len(group)} images): {err.message}")
    if len(stacks) != 1:
        raise input_error(
            RejectReason.UNSUPPORTED,
            f"the series splits into {len(stacks)} stacks (echoes, orientations, time points "
            "or 2D images); send one",
        )
    stack = stacks[0]
    _check_stack(stack, allow_irregular)
    try:
        volume, _header = read_stack(stack, cache.__getitem__)
        datasets = _headers(stack, cache)
    except IngestError as err:
        raise input_error(err.code, f"the series: {err.message}") from None
    except MemoryError:
        raise input_error(RejectReason.TOO_LARGE, "the series does not fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - e.g. an empty TransferSyntaxUID (issue 15, item 4)
        raise _undecodable("the series", exc) from None
    n_images = len(stack.records) if stack.kind == "volume" else stack.first.mosaic_tiles or 1
    return InputVolume(
        volume,
        stack.first.modality or None,
        "dicom",
        datasets,
        n_images,
        _dicom_grid(stack, volume),
    )


def _undecodable(where: str, exc: Exception) -> InputError:
    """A reader failed in a way it does not name: refuse the input, log the type (no value)."""
    log.warning("input refused: %s raised %s in the reader", where, type(exc).__name__)
    return input_error(
        RejectReason.MALFORMED, f"{where} could not be decoded ({type(exc).__name__})"
    )


def _dicom_grid(stack: Stack, volume: Volume) -> NativeGrid | None:
    """(columns, rows, slices in stack order): the grid ``read_stack`` assembled before RAS+."""
    first = stack.first
    normal = stack.normal if stack.kind == "volume" else first.mosaic_normal
    if first.iop is None or normal is None:
        return None
    return dicom_native_grid(volume, first.iop[:3], first.iop[3:], normal)


def _check_stack(stack: Stack, allow_irregular: bool) -> None:
    if stack.frames > 1 or stack.first.samples_per_pixel != 1:
        frames = stack.frames * stack.first.samples_per_pixel
        raise input_error(
            RejectReason.UNSUPPORTED,
            f"a 4D series of {frames} frames (time points, diffusion directions or colour channels); "
            "this model reads one 3D volume: send the images of one frame",
        )
    if stack.kind == "image2d":
        raise input_error(
            RejectReason.UNSUPPORTED,
            "a 2D image without patient geometry; this model reads volumes",
        )
    if stack.irregularity is not None and not allow_irregular:
        raise input_error(
            stack.irregularity, f"{stack.detail}; resample it or allow irregular stacks"
        )


def _headers(stack: Stack, cache: dict[SourceItem, bytes]) -> list[Dataset]:
    """Each distinct file's header (no pixels), in stack order: the SEG/SR writers' sources."""
    seen: set[SourceItem] = set()
    datasets = []
    for rec in stack.records:
        if rec.item in seen:
            continue
        seen.add(rec.item)
        datasets.append(read_dataset(cache[rec.item], stop_before_pixels=True))
    return datasets


__all__ = ["MAX_INPUT_BYTES", "MAX_INPUT_FILES", "Grid", "InputVolume", "input_error", "read_input"]
