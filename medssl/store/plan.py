"""Fingerprint → plan → typed accessor: preprocessing decided once from the data.

All planning lives here. ``fingerprint(store)`` (:mod:`medssl.store.fingerprint`) summarises
what the store holds (per modality: how many 3D volumes, their spacings and shapes,
foreground intensity percentiles from a bounded sample); ``make_plan(fp)`` turns that into decisions (target spacing, intensity normalisation per
modality, crop sizes); :class:`Plan` is the frozen, versioned record of those decisions,
written to ``STORE/plan.json`` and carried into every artifact so training and serving
preprocess alike (nnU-Net's fingerprint/plans idea, written anew).

Axes are the store's voxel axes, RAS+ order: axis 0 runs to patient Right, 1 Anterior,
2 Superior. A tensor ``[C, D, H, W]`` built from a store volume has D = x, H = y, W = z.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medssl.atomic import atomic_write_bytes
from medssl.store.fingerprint import fingerprint
from medssl.store.manifest import Manifest
from medssl.store.selection import MIN_SLICES, is_image_2d, is_volume_3d, modality_key
from medssl.store.volume_row import VolumeRow

log = logging.getLogger("medssl.plan")
PLAN_VERSION = 1
PLAN_FILE = "plan.json"
CROP_DIVISOR = 32  # every encoder downsamples by at most 32
VOXEL_BUDGET_3D = 96**3
VOXEL_BUDGET_2D = 256**2
ANISOTROPY_RATIO = 3.0
SPACING_DECIMALS = 6  # planned spacings are rounded: plan.json and its hash stay stable
IMAGE_PLAN_SLICE_MM = 1.0  # a plan made from 2D images only: a placeholder third spacing
IMAGE_PLAN_CROP_DEPTH = CROP_DIVISOR  # ... and the thinnest 3D crop an encoder takes


@dataclass(frozen=True)
class IntensityNorm:
    """How one modality's intensities are normalised.

    ``kind``: ``"clip_zscore"`` (clip to [lower, upper], then (x - mean) / std, fixed
    dataset statistics: CT), ``"window"`` (clip to [lower, upper], scale to [0, 1]) or
    ``"zscore"`` (each volume by its own mean and std: MR and unknown modalities).
    """

    kind: str = "zscore"
    lower: float | None = None
    upper: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("clip_zscore", "window", "zscore"):
            raise ValueError(f"intensity normalisation kind '{self.kind}': expected clip_zscore, window or zscore")
        if self.kind in ("clip_zscore", "window") and (self.lower is None or self.upper is None or self.lower >= self.upper):
            raise ValueError(f"{self.kind} needs lower < upper, got {self.lower}, {self.upper}")
        if self.kind == "clip_zscore" and (self.mean is None or not self.std or self.std <= 0):
            raise ValueError(f"clip_zscore needs a mean and a positive std, got {self.mean}, {self.std}")


@dataclass(frozen=True)
class Plan:
    """Preprocessing decisions for a store; read from and written to ``STORE/plan.json``.

    ``target_spacing`` (mm, x y z), ``crop_size`` (voxels, 3D crops at target spacing),
    ``crop_size_2d`` (voxels, in-plane x y of axial slices), ``normalisation`` per modality
    code, ``default_normalisation`` for modalities the fingerprint never saw.
    """

    target_spacing: tuple[float, float, float]
    crop_size: tuple[int, int, int]
    crop_size_2d: tuple[int, int]
    normalisation: dict[str, IntensityNorm] = field(default_factory=dict)
    default_normalisation: IntensityNorm = IntensityNorm("zscore")
    orientation: str = "RAS"
    min_slices: int = MIN_SLICES
    cache_dtype: str = "float16"
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if len(self.target_spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.target_spacing):
            raise ValueError(f"target_spacing {self.target_spacing}: expected 3 positive numbers (mm)")
        if len(self.crop_size) != 3 or len(self.crop_size_2d) != 2 or min(*self.crop_size, *self.crop_size_2d) < 1:
            raise ValueError(f"crop sizes {self.crop_size} / {self.crop_size_2d}: expected 3 and 2 positive integers")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype '{self.cache_dtype}': expected float16 or float32")

    def norm_for(self, modality: str | None) -> IntensityNorm:
        """The normalisation of a manifest ``modality`` (None → the default)."""
        return self.normalisation.get(modality_key(modality), self.default_normalisation)

    def selects(self, row: VolumeRow) -> bool:
        """Whether a manifest row is a 3D volume this plan crops from."""
        return is_volume_3d(row, self.min_slices)

    @property
    def hash(self) -> str:
        """16 hex digits naming the preprocessing (the cache folder); changes with any field."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """The plan as JSON-able fields (tuples stay tuples; :meth:`from_dict` reads it back)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """A plan from its parsed JSON (``plan.json``, an artifact's ``"plan"``); ValueError if
        unusable, TypeError if not a JSON object."""
        if not isinstance(data, dict):
            raise TypeError(f"a plan must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise ValueError(f"plan version {version!r}: this medssl reads versions up to {PLAN_VERSION}")
        try:
            return cls(
                target_spacing=tuple(float(v) for v in data["target_spacing"]),
                crop_size=tuple(int(v) for v in data["crop_size"]),
                crop_size_2d=tuple(int(v) for v in data["crop_size_2d"]),
                normalisation={str(k): IntensityNorm(**v) for k, v in data.get("normalisation", {}).items()},
                default_normalisation=IntensityNorm(**data.get("default_normalisation", {})),
                orientation=str(data.get("orientation", "RAS")),
                min_slices=int(data.get("min_slices", MIN_SLICES)),
                cache_dtype=str(data.get("cache_dtype", "float16")),
                version=version,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"plan JSON is missing or mistypes a field ({exc})") from None

    def save(self, store: str | Path) -> Path:
        path = Path(store) / PLAN_FILE
        atomic_write_bytes(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, store: str | Path) -> Plan:
        path = Path(store) / PLAN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no plan yet; make one with make_plan(fingerprint(store)).save(store)")
        return cls.from_json(path.read_text())


# plan -----------------------------------------------------------------------------------
def make_plan(
    fp: dict,
    *,
    crop_size: tuple[int, int, int] | None = None,
    crop_size_2d: tuple[int, int] | None = None,
    voxel_budget: int = VOXEL_BUDGET_3D,
    voxel_budget_2d: int = VOXEL_BUDGET_2D,
    ct_window: tuple[float, float] | None = None,
    cache_dtype: str = "float16",
) -> Plan:
    """Decide target spacing, normalisation and crop sizes from a :func:`fingerprint`.

    Target spacing: the median spacing; if its coarsest axis is more than 3x every other,
    that axis takes its 10th percentile instead (never finer than the other axes), so thick
    slices are not interpolated into many fake ones yet thin-slice volumes keep detail.
    CT: clip to the foreground 0.5–99.5 percentiles, z-score by foreground mean/std; or,
    with ``ct_window``, clip to the window and scale to [0, 1]. Other modalities: per-volume
    z-score. Crop sizes: see :func:`fit_crop_size`.
    """
    stats = fp.get("all")
    if not stats:
        raise ValueError(f"the fingerprint holds no 3D volume of at least {fp.get('min_slices')} slices to plan from")
    target = target_spacing(stats["spacing_median"], stats["spacing_p10"])
    median_shape = [e / t for e, t in zip(stats["extent_median_mm"], target)]
    crop = tuple(crop_size) if crop_size is not None else fit_crop_size(median_shape, voxel_budget)
    crop_2d = tuple(crop_size_2d) if crop_size_2d is not None else fit_crop_size(median_shape[:2], voxel_budget_2d)
    for size in (crop, crop_2d):
        if any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"crop size {size}: expected positive integers")
    norms = {m: _norm_for(m, s.get("intensity", {}), ct_window) for m, s in fp["modalities"].items()}
    return Plan(
        target_spacing=tuple(round(float(t), SPACING_DECIMALS) for t in target),
        crop_size=tuple(int(s) for s in crop),
        crop_size_2d=tuple(int(s) for s in crop_2d),
        normalisation=norms,
        min_slices=int(fp.get("min_slices", MIN_SLICES)),
        cache_dtype=cache_dtype,
    )


def plan_for_images(store: str | Path, crop_size_2d: tuple[int, int] | None = None) -> Plan:
    """A plan for a store of 2D images only (no 3D volume to fingerprint): the median pixel
    spacing, per-image z-score (the default normalisation), ``crop_size_2d`` fitted to the
    median image within ``VOXEL_BUDGET_2D``; the third axis holds placeholders."""
    with Manifest(Path(store) / "manifest.sqlite") as manifest:
        rows = [row for row in manifest.volumes() if is_image_2d(row)]
    if not rows:
        raise ValueError(f"store {store}: no 2D image to plan from")
    spacing = np.median([r.spacing[:2] for r in rows], axis=0)
    shape = np.median([r.shape[:2] for r in rows], axis=0)
    crop = tuple(crop_size_2d) if crop_size_2d else fit_crop_size(list(shape), VOXEL_BUDGET_2D)
    return Plan(
        target_spacing=(*(round(float(s), SPACING_DECIMALS) for s in spacing), IMAGE_PLAN_SLICE_MM),
        crop_size=(*crop, IMAGE_PLAN_CROP_DEPTH),
        crop_size_2d=crop,
    )


def load_or_make_plan(store: str | Path, *, from_images: bool = False) -> Plan:
    """``STORE/plan.json``; when missing, made and saved: from the store's fingerprint (its 3D
    volumes) or, with ``from_images`` and no 3D volume in the store, from its 2D images."""
    if (Path(store) / PLAN_FILE).is_file():
        return Plan.load(store)
    fp = fingerprint(store)
    plan = plan_for_images(store) if from_images and not fp["all"] else make_plan(fp)
    plan.save(store)
    log.info(
        "plan written to %s (spacing %s, crop %s)",
        Path(store) / PLAN_FILE,
        plan.target_spacing,
        plan.crop_size,
    )
    return plan



def target_spacing(median: list[float], p10: list[float], ratio: float = ANISOTROPY_RATIO) -> list[float]:
    """Median spacing, with the anisotropy rule applied to its coarsest axis."""
    target = [float(v) for v in median]
    worst = int(np.argmax(target))
    others = [t for i, t in enumerate(target) if i != worst]
    if others and target[worst] > ratio * max(others):
        target[worst] = max(float(p10[worst]), max(others))
    return target


def fit_crop_size(median_shape: list[float], voxel_budget: int, divisor: int = CROP_DIVISOR) -> tuple[int, ...]:
    """A crop within ``voxel_budget`` voxels, each side a multiple of ``divisor``.

    Starts from a cube of the budget; an axis whose median extent is shorter takes the
    largest multiple of ``divisor`` inside it (at least ``divisor``) and hands its unused
    budget to the other axes, which are never made longer than their own median extent.
    """
    n = len(median_shape)
    caps = [max(divisor, int(s // divisor) * divisor) for s in median_shape]
    size: list[float | None] = [None] * n
    while True:
        free = [i for i in range(n) if size[i] is None]
        if not free:
            break
        fixed = math.prod(s for s in size if s is not None)
        side = (voxel_budget / fixed) ** (1.0 / len(free)) + 1e-6  # 96**3 ** (1/3) is 95.999...
        capped = [i for i in free if caps[i] <= side]
        if not capped:
            for i in free:
                size[i] = max(divisor, int(side // divisor) * divisor)
            break
        for i in capped:
            size[i] = caps[i]
    return tuple(int(s) for s in size)


def _norm_for(modality: str, intensity: dict, ct_window: tuple[float, float] | None) -> IntensityNorm:
    if modality != "CT":
        return IntensityNorm("zscore")
    if ct_window is not None:
        return IntensityNorm("window", lower=float(ct_window[0]), upper=float(ct_window[1]))
    if not intensity.get("sampled_voxels"):
        return IntensityNorm("zscore")
    std = max(float(intensity["std"]), 1e-6)
    return IntensityNorm("clip_zscore", lower=intensity["p00_5"], upper=intensity["p99_5"], mean=intensity["mean"], std=std)
