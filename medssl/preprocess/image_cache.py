"""The 2D image cache: each 2D store image (radiograph, ultrasound frame) preprocessed once.

Layout mirrors :mod:`medssl.preprocess.volume_cache`: ``STORE/cache2d/<plan_hash>/<volume_id>.npy``
(``[X, Y]`` in the plan's ``cache_dtype``, through :func:`~medssl.preprocess.stage.preprocess`:
intensity-normalised as the plan says for the image's modality, resampled to the plan's
in-plane spacing ``target_spacing[:2]``), ``<volume_id>.json`` beside it (written last: marks
the image done) and ``index.json``. Memory-mapped on read; built once
(:mod:`medssl.preprocess.build_once`). An image whose manifest shape holds more than
``max_pixels`` pixels (a header bomb, a stitched panorama) is refused before any byte is
read and listed under ``failed`` with its reason logged.

A store without 3D volumes plans from its 2D images: :func:`~medssl.store.plan.plan_for_images`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medssl.atomic import atomic_write_bytes
from medssl.errors import MedsslError
from medssl.io.nifti import read_nifti
from medssl.preprocess.array_index import ArrayCacheBuilder, ArrayIndex
from medssl.preprocess.build_once import (
    POLL_S,
    WAIT_TIMEOUT_S,
    Worker,
    write_array,
)
from medssl.preprocess.stage import preprocess
from medssl.store.manifest import Manifest
from medssl.store.plan import Plan
from medssl.store.selection import is_image_2d, modality_key
from medssl.store.volume_row import VolumeRow

INDEX_VERSION = 1
MAX_PIXELS = 1 << 26  # 64 Mpx: larger than any real radiograph
BYTES_PER_PIXEL_READ = 8  # the reader's bound: float64 pixels at most


@dataclass(frozen=True)
class CachedImage:
    """One cached 2D image: ``file`` relative to the cache folder, ``shape`` ``[X, Y]`` at ``spacing``."""

    volume_id: str
    file: str
    shape: tuple[int, int]
    spacing: tuple[float, float]
    modality: str
    patient: str | None
    study: str | None
    pad_value: float
    sha256: str

    @classmethod
    def from_dict(cls, data: dict) -> CachedImage:
        fixed = {"shape": tuple(int(s) for s in data["shape"]), "spacing": tuple(float(s) for s in data["spacing"])}
        return cls(**{**data, **fixed})


@dataclass(frozen=True)
class ImageIndex(ArrayIndex[CachedImage]):
    """The 2D cache's ``index.json``: :class:`~medssl.preprocess.array_index.ArrayIndex` of
    :class:`CachedImage` (``images``, memory maps ``[X, Y]``)."""

    VERSION: ClassVar[int] = INDEX_VERSION
    ENTRIES: ClassVar[str] = "images"
    ENTRY: ClassVar[type] = CachedImage

    @property
    def images(self) -> tuple[CachedImage, ...]:
        return self.entries


def image_cache_dir(store: str | Path, plan: Plan) -> Path:
    return Path(store) / "cache2d" / plan.hash


def planned_images(store: str | Path) -> list[VolumeRow]:
    """Manifest rows of 2D images, in volume_id order."""
    with Manifest(Path(store) / "manifest.sqlite") as manifest:
        return [row for row in manifest.volumes() if is_image_2d(row)]


def build_image_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True, max_pixels: int = MAX_PIXELS) -> ImageIndex:
    """Cache every 2D image not cached yet, then write the index; returns it (module doc)."""
    return ImageCacheBuilder(store, plan, max_pixels).build(workers, progress)


def ensure_image_cache(store: str | Path, plan: Plan, workers: int = 1, progress: bool = True, timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = POLL_S) -> ImageIndex:
    """The image index from any rank: rank 0 builds if needed, others wait for a covering index."""
    return ImageCacheBuilder(store, plan).ensure(workers, progress, timeout_s, poll_s)


class ImageCacheBuilder(ArrayCacheBuilder[ImageIndex]):
    """The 2D image cache of ``store`` under ``plan``: one job per 2D image."""

    name = "2D image cache"
    description = "caching 2D images"
    INDEX = ImageIndex

    def __init__(self, store: str | Path, plan: Plan, max_pixels: int = MAX_PIXELS) -> None:
        super().__init__(image_cache_dir(store, plan), planned_images(store))
        self.store, self.plan, self.plan_hash, self.max_pixels = Path(store), plan, plan.hash, int(max_pixels)

    def worker(self) -> Worker:
        return Worker(cache_image, init_image_worker, (str(self.store), str(self.root), self.plan.to_json(), self.max_pixels))


# the worker -------------------------------------------------------------------------------
_CTX: dict = {}


def init_image_worker(store: str, root: str, plan_json: str, max_pixels: int) -> None:
    _CTX.update(store=Path(store), root=Path(root), plan=Plan.from_json(plan_json), max_pixels=max_pixels)


def cache_image(row: VolumeRow) -> dict:
    """Cache one 2D manifest row; returns its :class:`CachedImage` fields or ``{"volume_id", "error"}``."""
    store, root, plan = _CTX["store"], _CTX["root"], _CTX["plan"]
    volume_id = row.volume_id
    try:
        array, spacing = read_image(store / row.path, row.shape, _CTX["max_pixels"])
        array, reached = preprocess(array, spacing, row.modality, plan)
        write_array(root / f"{volume_id}.npy", array)
        meta = {
            "volume_id": volume_id,
            "file": f"{volume_id}.npy",
            "shape": [int(s) for s in array.shape],
            "spacing": [round(float(s), 6) for s in reached],
            "modality": modality_key(row.modality),
            "patient": row.patient,
            "study": row.study,
            "pad_value": float(array.min()),
            "sha256": row.sha256,
        }
        atomic_write_bytes(root / f"{volume_id}.json", json.dumps(meta).encode())  # last: marks it done
        return meta
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}


def read_image(path: Path, shape: tuple[int, ...], max_pixels: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 2D store image ``[X, Y]`` and its spacing; ValueError for a manifest ``shape`` that is
    not 2D or over ``max_pixels`` (checked before reading), or a file that is not 2D."""
    pixels = math.prod(shape)
    if len(shape) != 2 or pixels > max_pixels:
        raise ValueError(f"image shape {list(shape)} ({pixels} pixels): expected 2 axes and at most {max_pixels} pixels")
    image = read_nifti(path.read_bytes(), max_bytes=max_pixels * BYTES_PER_PIXEL_READ)
    array = image.array
    if array.ndim == 3 and array.shape[2] == 1:  # NIfTI keeps a 2D image as [X, Y, 1]
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"manifest says 2D, file holds shape {image.array.shape}")
    return array, image.spacing[:2]
