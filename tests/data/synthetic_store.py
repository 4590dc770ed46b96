"""A store written directly (NIfTI files + manifest rows), for plan, cache and data module tests.

Volumes are phantoms (tools.phantom) of chosen shape, spacing, modality and patient; no
ingest run is needed, so a store of a few volumes takes well under a second.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.store.manifest import Manifest
from medssl.store.volume_row import VolumeRow
from tools.phantom import make_ct_phantom, make_mr_phantom


@dataclass(frozen=True)
class Spec:
    shape: tuple[int, ...] = (40, 36, 24)
    spacing: tuple[float, ...] = (2.0, 2.0, 3.0)
    modality: str | None = "CT"
    patient: str | None = "p0"
    seed: int = 0
    array: np.ndarray | None = None  # overrides the phantom


def phantom_array(spec: Spec) -> np.ndarray:
    if spec.array is not None:
        return np.asarray(spec.array)
    make = make_mr_phantom if spec.modality == "MR" else make_ct_phantom
    return make(spec.shape, spec.spacing, seed=spec.seed, n_lesions=0).image


def write_store(root: Path, specs: list[Spec]) -> Path:
    """Write ``specs`` as volumes ``v000``, ``v001``, ... into a store at ``root``; returns ``root``."""
    root = Path(root)
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    with Manifest(root / "manifest.sqlite") as manifest:
        for i, spec in enumerate(specs):
            array = phantom_array(spec).astype(np.float32)
            affine = np.diag([*spec.spacing, 1.0])
            data = nifti_gz_bytes(Volume(array, affine))
            volume_id = f"v{i:03d}"
            rel = f"volumes/{volume_id}.nii.gz"
            (root / rel).write_bytes(data)
            manifest.add_volume({
                "volume_id": volume_id,
                "path": rel,
                "modality": spec.modality,
                "ndim": array.ndim,
                "shape": list(array.shape),
                "spacing": list(spec.spacing),
                "affine": affine.tolist(),
                "axcodes": "RAS",
                "dtype": "float32",
                "sha256": hashlib.sha256(data).hexdigest(),
                "nbytes": len(data),
                "source_kind": "nifti",
                "patient": spec.patient,
                "study": f"s-{spec.patient}",
            })
    return root


def add_row(root: Path, volume_id: str, **fields) -> None:
    """A manifest row without a file (for volumes a plan must leave out: 2D, 4D, thin)."""
    with Manifest(Path(root) / "manifest.sqlite") as manifest:
        manifest.add_volume({"volume_id": volume_id, "path": f"volumes/{volume_id}.nii.gz", "sha256": "0" * 64, **fields})


def volume_row(volume_id: str = "x", **columns) -> VolumeRow:
    """A manifest row read back, without a store: ``columns`` as SQLite holds them (JSON text)."""
    return VolumeRow.from_row({"volume_id": volume_id, "path": f"volumes/{volume_id}.nii.gz", "sha256": "0" * 64, **columns})


def mixed_specs(n_patients: int = 4, per_patient: int = 2) -> list[Spec]:
    """CT and MR volumes of ``n_patients`` patients, two spacings, small shapes."""
    specs = []
    for p in range(n_patients):
        for j in range(per_patient):
            modality = "MR" if j % 2 else "CT"
            spacing = (2.0, 2.0, 3.0) if p % 2 else (1.5, 1.5, 3.0)
            specs.append(Spec((40, 36, 24), spacing, modality, f"p{p}", seed=10 * p + j))
    return specs
