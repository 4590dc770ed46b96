"""CT- and MR-like torso phantoms: body outline, organs, vessels, bones and lesions.

The torso spans the field of view: lungs and heart in the upper (superior) half, liver,
spleen and kidneys below, spine posterior, aorta left-anterior of the spine. Organs are
defined in coordinates normalised to the field of view, so any shape or spacing gives a
whole torso; thin structures (vessels, ribs, lesions) are sized in mm.

Orientation is anatomical and checkable: the liver lies on the patient's Right (+x in RAS,
high ``i``), the spleen and the aorta on the Left, the spine Posterior (low ``j``), the
lungs Superior (high ``k``). See ``tools.phantom.volume`` for the array/affine conventions.

Usage::

    ph = make_ct_phantom((128, 128, 64), (3.0, 3.0, 4.0), seed=1, n_lesions=4)
    ph.image      # float32 [128, 128, 64], HU
    ph.labels     # uint8 [128, 128, 64]
    ph.affine     # voxel -> RAS mm
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tools.phantom.canvas import LABEL_ID, ORGAN_LABELS, TISSUE_ID, Canvas, tissue_lut
from tools.phantom.lesions import LESION_KINDS, place_lesions
from tools.phantom.volume import Lesion, Phantom

BODY_CENTER = (0.0, -0.02)
BODY_RADII = (0.86, 0.62)
INTERIOR_RHO = 0.80  # inside the muscle wall; organs are clipped to it


def _body_rho(c: Canvas) -> np.ndarray:
    """``[I, J, 1]`` elliptic radius of the body cross-section (1.0 at the skin)."""
    return np.sqrt(
        ((c.xn - BODY_CENTER[0]) / BODY_RADII[0]) ** 2
        + ((c.yn - BODY_CENTER[1]) / BODY_RADII[1]) ** 2
    )


def _draw_wall(c: Canvas, rho: np.ndarray) -> None:
    c.paint(rho < 1.0, "fat", "body")
    c.paint((rho >= INTERIOR_RHO) & (rho < 0.90), "muscle", "muscle")
    for side in (-1.0, 1.0):  # paraspinal muscles
        c.paint(c.ellipse((0.15 * side, -0.40), (0.09, 0.09)), "muscle", "muscle")


def _draw_ribs(c: Canvas, rho: np.ndarray) -> None:
    ring = (rho >= INTERIOR_RHO) & (rho < 0.85) & (c.yn < 0.30)
    half_thickness = max(4.0, 0.6 * float(c.spacing[2]))
    for level in np.arange(0.08, 0.95, 0.12):
        z_mm = level * c.half_extent[2]
        c.paint(ring & (np.abs(c.zmm - z_mm) < half_thickness), "cortical_bone", "ribs")


def _draw_organs(c: Canvas, rho: np.ndarray) -> None:
    inside = rho < INTERIOR_RHO
    c.paint(c.ellipsoid((0.33, 0.05, -0.25), (0.40, 0.42, 0.30)) & inside, "liver", "liver")
    c.paint(c.ellipsoid((-0.50, -0.20, -0.20), (0.14, 0.18, 0.18)) & inside, "spleen", "spleen")
    c.paint(
        c.ellipsoid((0.30, -0.30, -0.64), (0.11, 0.12, 0.20)) & inside, "kidney", "kidney_right"
    )
    c.paint(
        c.ellipsoid((-0.30, -0.30, -0.60), (0.11, 0.12, 0.20)) & inside, "kidney", "kidney_left"
    )
    c.paint(c.ellipsoid((0.36, 0.02, 0.50), (0.27, 0.42, 0.48)) & inside, "lung", "lung_right")
    c.paint(c.ellipsoid((-0.37, 0.02, 0.52), (0.26, 0.42, 0.46)) & inside, "lung", "lung_left")
    c.paint(c.ellipsoid((-0.08, 0.18, 0.28), (0.25, 0.22, 0.20)), "heart", "heart")


def _draw_vessels(c: Canvas, rng: np.random.Generator) -> None:
    # Aorta and inferior vena cava: vertical tubes ending in the heart.
    for (cx, cy, top), radius_mm, tissue, label in (
        ((-0.08, -0.08, 0.30), 11.0, "aorta", "aorta"),
        ((0.12, -0.06, 0.15), 10.0, "vein", "vessels"),
    ):
        a = c.to_mm((cx, cy, -1.0))
        tube = ((c.xmm - a[0]) ** 2 + (c.ymm - a[1]) ** 2 <= radius_mm**2) & (
            c.zmm <= top * c.half_extent[2]
        )
        c.paint(tube, tissue, label)
    # Renal arteries, from the aorta to each kidney's hilum.
    for kx, kz in ((0.30, -0.64), (-0.30, -0.60)):
        block, tube = c.segment(
            c.to_mm((-0.08, -0.08, kz + 0.05)), c.to_mm((kx * 0.7, -0.27, kz)), 3.0
        )
        _paint_block(c, block, tube, allowed=("fat", "kidney"), tissue="aorta", label="vessels")
    # Pulmonary vessels: seeded branches from each hilum into its lung.
    for side, (lx, lz) in ((1.0, (0.36, 0.50)), (-1.0, (-0.37, 0.52))):
        hilum = c.to_mm((0.14 * side, 0.02, 0.42))
        for _ in range(6):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            end = c.to_mm((lx, 0.02, lz) + direction * np.array([0.2, 0.3, 0.35]))
            block, tube = c.segment(hilum, end, float(rng.uniform(2.0, 3.5)))
            _paint_block(c, block, tube, allowed=("lung",), tissue="vein", label="vessels")


def _paint_block(
    c: Canvas,
    block: tuple[slice, ...],
    mask: np.ndarray,
    *,
    allowed: Sequence[str],
    tissue: str,
    label: str,
) -> None:
    """Paint ``mask`` in ``block`` only over ``allowed`` tissues (vessels stay in organs)."""
    sub_tissue = c.tissue[block]
    ok = mask & np.isin(sub_tissue, [TISSUE_ID[t] for t in allowed])
    sub_tissue[ok] = TISSUE_ID[tissue]
    c.labels[block][ok] = LABEL_ID[label]


def _draw_spine(c: Canvas) -> None:
    period_mm = 32.0  # a vertebral body (~25 mm) and its disc (~7 mm)
    phase = np.mod(c.zmm + c.half_extent[2], period_mm) / period_mm
    vertebra_z = phase < 0.78
    body_rho = np.sqrt((c.xn / 0.09) ** 2 + ((c.yn + 0.25) / 0.10) ** 2)
    body = body_rho <= 1.0
    c.paint(body & ~vertebra_z, "disc", "intervertebral_disc")
    cortex_z = (phase < 0.08) | (phase > 0.70)
    c.paint(body & vertebra_z & ((body_rho > 0.75) | cortex_z), "cortical_bone", "vertebrae")
    c.paint(body & vertebra_z & (body_rho <= 0.75) & ~cortex_z, "marrow", "vertebrae")
    canal = c.ellipse((0.0, -0.40), (0.04, 0.045))
    arch = c.ellipse((0.0, -0.41), (0.08, 0.075)) & ~canal
    spinous = (np.abs(c.xn) < 0.025) & (c.yn > -0.53) & (c.yn < -0.46)
    c.paint(arch & vertebra_z, "cortical_bone", "vertebrae")
    c.paint(spinous & (phase < 0.6), "cortical_bone", "vertebrae")
    c.paint(canal, "csf", "spinal_canal")


def build_anatomy(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center_mm: tuple[float, float, float],
    rng: np.random.Generator,
    n_lesions: int,
    lesion_kinds: Sequence[str] | None,
    variation: float = 0.0,
) -> tuple[Canvas, list[Lesion]]:
    """Paint the torso and its lesions; returns the canvas and the lesion list.

    ``variation`` > 0 gives this body its own size and position: a relative size per axis
    drawn from ``1 ± variation`` and an offset from ``± variation / 2`` of the half field of
    view (0: every seed shares one anatomy, as before).
    """
    if min(shape) < 8:
        raise ValueError(f"shape {shape}: every axis needs at least 8 voxels for the anatomy")
    if not 0.0 <= variation <= 0.3:
        raise ValueError(f"variation must be in [0, 0.3] (a share of the body's size), got {variation}")
    scale, shift = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    if variation > 0:
        scale = tuple(1.0 + rng.uniform(-variation, variation, 3))
        shift = tuple(rng.uniform(-variation / 2, variation / 2, 3))
    c = Canvas.empty(shape, spacing, center_mm, scale, shift)
    rho = _body_rho(c)
    _draw_wall(c, rho)
    _draw_ribs(c, rho)
    _draw_organs(c, rho)
    _draw_vessels(c, rng)
    _draw_spine(c)
    lesions = place_lesions(c, rng, n_lesions, lesion_kinds)
    return c, lesions


def _label_names(c: Canvas, lesions: list[Lesion]) -> dict[int, str]:
    present = set(np.unique(c.labels).tolist())
    names = {v: n for v, n in ORGAN_LABELS.items() if v in present or v == 0}
    names.update({les.label: f"lesion_{les.label - 100}_{les.kind}" for les in lesions})
    return names


def _check_args(n_lesions: int, lesion_kinds: Sequence[str] | None) -> None:
    if n_lesions < 0 or n_lesions > 150:
        raise ValueError(f"n_lesions must be in 0..150, got {n_lesions}")
    for kind in lesion_kinds or ():
        if kind not in LESION_KINDS:
            raise ValueError(f"lesion kind {kind!r} unknown; choose from {sorted(LESION_KINDS)}")


def make_ct_phantom(
    shape: tuple[int, int, int] = (128, 128, 64),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
    *,
    seed: int = 0,
    n_lesions: int = 4,
    lesion_kinds: Sequence[str] | None = None,
    noise_sd: float = 10.0,
    center_mm: tuple[float, float, float] = (10.0, -20.0, 30.0),
    variation: float = 0.0,
) -> Phantom:
    """A CT-like torso in HU, ``image`` float32 ``[I, J, K]`` in RAS+ order.

    shape, spacing: voxels and mm along (i → Right, j → Anterior, k → Superior);
    seed: everything random (vessel branches, lesion sites and sizes, noise) comes from it;
    n_lesions: lesions to place; their kinds cycle through ``lesion_kinds`` (default: all
    of ``LESION_KINDS`` in order), each with its own label value 101, 102, ...;
    noise_sd: standard deviation (HU) of the spatially correlated Gaussian noise;
    center_mm: RAS world position of the volume centre (non-zero by default so readers
    that drop the origin are caught);
    variation: how much this body's size and position differ from the reference anatomy
    (:func:`build_anatomy`; 0: the same anatomy for every seed).

    Values are clipped to [-1024, 3071] HU, the range a 12-bit CT stores.
    """
    _check_args(n_lesions, lesion_kinds)
    rng = np.random.default_rng(seed)
    canvas, lesions = build_anatomy(shape, spacing, center_mm, rng, n_lesions, lesion_kinds, variation)
    image = tissue_lut("CT")[canvas.tissue]
    image = ndimage.gaussian_filter(image, sigma=0.4, mode="nearest")  # mild partial-volume edges
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=0.7)
    image += noise * np.float32(noise_sd / max(float(noise.std()), 1e-6))
    np.clip(image, -1024.0, 3071.0, out=image)
    return Phantom(
        image=image.astype(np.float32, copy=False),
        labels=canvas.labels,
        label_names=_label_names(canvas, lesions),
        affine=canvas.affine,
        lesions=lesions,
        modality="CT",
        seed=seed,
    )


def make_mr_phantom(
    shape: tuple[int, int, int] = (128, 128, 64),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
    *,
    seed: int = 0,
    n_lesions: int = 4,
    lesion_kinds: Sequence[str] | None = None,
    noise_sd: float = 15.0,
    bias_strength: float = 0.15,
    center_mm: tuple[float, float, float] = (10.0, -20.0, 30.0),
    variation: float = 0.0,
) -> Phantom:
    """A T1-weighted-like MR torso (fat bright, fluid and lung dark), arbitrary units.

    Same anatomy and arguments as :func:`make_ct_phantom` (same seed → same labels), plus a
    smooth multiplicative bias field of relative size ``bias_strength`` and Rician noise
    (magnitude of complex Gaussian noise with ``noise_sd``). Values are in [0, 4095].
    """
    _check_args(n_lesions, lesion_kinds)
    rng = np.random.default_rng(seed)
    canvas, lesions = build_anatomy(shape, spacing, center_mm, rng, n_lesions, lesion_kinds, variation)
    image = tissue_lut("MR")[canvas.tissue]
    image = ndimage.gaussian_filter(image, sigma=0.4, mode="nearest")
    coeffs = rng.uniform(-1.0, 1.0, size=4).astype(np.float32)
    bias = np.exp(
        np.float32(bias_strength)
        * (
            coeffs[0] * canvas.xn
            + coeffs[1] * canvas.yn
            + coeffs[2] * canvas.zn
            + coeffs[3] * canvas.xn * canvas.zn
        )
    )
    image *= bias
    real = image + rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sd)
    imag = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_sd)
    image = np.sqrt(real * real + imag * imag)
    np.clip(image, 0.0, 4095.0, out=image)
    return Phantom(
        image=image.astype(np.float32, copy=False),
        labels=canvas.labels,
        label_names=_label_names(canvas, lesions),
        affine=canvas.affine,
        lesions=lesions,
        modality="MR",
        seed=seed,
    )
