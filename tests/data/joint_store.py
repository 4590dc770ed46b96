"""A store of 3D phantoms and 2D images (radiograph-like), written directly, for the joint data tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.store.manifest import Manifest
from tests.data.synthetic_store import Spec, write_store


def add_image(
    root: Path, volume_id: str, shape=(60, 50), spacing=(0.5, 0.5), patient="p9", seed=0
) -> None:
    """A 2D DX image ``[X, Y]`` (smooth noise) with its manifest row."""
    rng = np.random.default_rng(seed)
    array = rng.normal(1000, 100, size=shape).astype(np.float32)
    data = nifti_gz_bytes(Volume(array, np.diag([*spacing, 1.0, 1.0])))
    rel = f"volumes/{volume_id}.nii.gz"
    (Path(root) / "volumes").mkdir(parents=True, exist_ok=True)
    (Path(root) / rel).write_bytes(data)
    with Manifest(Path(root) / "manifest.sqlite") as manifest:
        manifest.add_volume(
            {
                "volume_id": volume_id,
                "path": rel,
                "modality": "DX",
                "ndim": 2,
                "shape": list(shape),
                "spacing": list(spacing),
                "affine": np.diag([*spacing, 1.0, 1.0]).tolist(),
                "axcodes": "2D",
                "dtype": "float32",
                "sha256": hashlib.sha256(data).hexdigest(),
                "nbytes": len(data),
                "source_kind": "nifti",
                "patient": patient,
                "study": f"s-{patient}",
            }
        )


def joint_store(root: Path, volumes: int = 2, images: int = 3) -> Path:
    root = Path(root)
    specs = [Spec((24, 24, 16), (2.0, 2.0, 3.0), "CT", f"p{i}", seed=i) for i in range(volumes)]
    if specs:
        write_store(root, specs)
    for j in range(images):
        add_image(root, f"i{j:03d}", patient=f"q{j}", seed=j)
    return root
