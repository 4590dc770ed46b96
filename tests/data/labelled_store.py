"""A store of CT phantoms with label maps, diagnosis classes and world boxes, written without ingest.

Volumes go through :func:`tests.data.synthetic_store.write_store`; label maps to
``STORE/labels/<volume_id>.nii.gz`` with medssl's NIfTI writer, and one row per volume into
the manifest's ``labels`` table (the schema :mod:`medssl.store.labels` reads; it has no
ingest-free writer). Lesion label values of the phantom (101, 102, ...) are renamed to one
value per lesion kind (``LESION_VALUES``), so the store has one structure vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.io.volume import Volume, nifti_gz_bytes
from tests.data.synthetic_store import Spec, write_store
from tools.phantom import ORGAN_LABELS, make_ct_phantom

LESION_VALUES = {"solid_nodule": 20, "hypodense": 21, "calcified": 22}
CLASS_OF_KIND = {"solid_nodule": "nodule", "hypodense": "liver_lesion", "calcified": "calcification"}
LABELS_TABLE = (
    "CREATE TABLE IF NOT EXISTS labels (volume_id TEXT PRIMARY KEY, mask_path TEXT, mask_sha256 TEXT,"
    " structures TEXT, classes TEXT, boxes TEXT, label_digest TEXT, corrections TEXT, created_at TEXT)"
)


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int] = (48, 48, 32)
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    patient: str = "p0"
    seed: int = 0
    kinds: tuple[str, ...] = ("solid_nodule",)  # lesion kinds, one lesion each
    mask: bool = True  # False: classes and world boxes only


def default_cases() -> list[Case]:
    """Six volumes of five patients; two at a coarser spacing, resampled by the plan."""
    kinds = [("solid_nodule",), ("hypodense",), ("solid_nodule",), ("hypodense",), ("calcified",), ("solid_nodule",)]
    patients = ["p0", "p0", "p1", "p2", "p3", "p4"]
    cases = []
    for i, (k, p) in enumerate(zip(kinds, patients)):
        coarse = i in (1, 4)
        cases.append(Case((40, 40, 30) if coarse else (48, 48, 32), (2.4, 2.4, 3.2) if coarse else (2.0, 2.0, 3.0), p, seed=i, kinds=k))
    return cases


@functools.lru_cache(maxsize=32)
def phantom_of(case: Case):
    return make_ct_phantom(case.shape, case.spacing, seed=case.seed, n_lesions=len(case.kinds), lesion_kinds=list(case.kinds))


def remapped_labels(phantom) -> tuple[np.ndarray, dict[int, str]]:
    """The phantom's label map with lesion values renamed by kind, and its structure names (no 0)."""
    labels = phantom.labels.astype(np.uint8).copy()
    for lesion in phantom.lesions:
        labels[phantom.labels == lesion.label] = LESION_VALUES[lesion.kind]
    names = {v: n for v, n in ORGAN_LABELS.items() if v != 0}
    names.update({v: f"lesion_{k}" for k, v in LESION_VALUES.items()})
    return labels, names


def store_affine(case: Case) -> np.ndarray:
    """The affine :func:`write_store` gives a volume (origin 0, RAS axes)."""
    return np.diag([*case.spacing, 1.0])


def lesion_world_boxes(phantom, affine: np.ndarray) -> list[dict]:
    """Each lesion's voxel box (store grid) as a world box: outer voxel edges in RAS mm."""
    boxes = []
    for lesion in phantom.lesions:
        lo = np.array([*lesion.bbox[:3], 1.0]) - [0.5, 0.5, 0.5, 0.0]
        hi = np.array([*lesion.bbox[3:], 1.0]) - [0.5, 0.5, 0.5, 0.0]
        a, b = (affine @ lo)[:3], (affine @ hi)[:3]
        boxes.append({"label": f"lesion_{lesion.kind}", "min": np.minimum(a, b).tolist(), "max": np.maximum(a, b).tolist()})
    return boxes


def write_labelled_store(root: Path, cases: list[Case] | None = None, classes: list[list[str]] | None = None) -> Path:
    """Volumes ``v000``.. with label maps and ``labels`` rows; ``classes[i]`` overrides case i's classes
    (default: the class of each lesion kind present)."""
    root = Path(root)
    cases = default_cases() if cases is None else cases
    phantoms = [phantom_of(c) for c in cases]
    specs = [Spec(c.shape, c.spacing, "CT", c.patient, seed=c.seed, array=ph.image) for c, ph in zip(cases, phantoms)]
    write_store(root, specs)
    (root / "labels").mkdir(exist_ok=True)
    db = sqlite3.connect(root / "manifest.sqlite")
    with db:
        db.execute(LABELS_TABLE)
        for i, (case, ph) in enumerate(zip(cases, phantoms)):
            volume_id = f"v{i:03d}"
            labels, names = remapped_labels(ph)
            mask_path = sha = None
            if case.mask:
                data = nifti_gz_bytes(Volume(labels, store_affine(case)))
                mask_path = f"labels/{volume_id}.nii.gz"
                (root / mask_path).write_bytes(data)
                sha = hashlib.sha256(data).hexdigest()
            present = sorted({les.kind for les in ph.lesions})
            case_classes = classes[i] if classes is not None else [CLASS_OF_KIND[k] for k in present]
            db.execute(
                "INSERT OR REPLACE INTO labels (volume_id, mask_path, mask_sha256, structures, classes, boxes, label_digest, corrections, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (volume_id, mask_path, sha, json.dumps({str(k): v for k, v in names.items()}), json.dumps(case_classes),
                 json.dumps(lesion_world_boxes(ph, store_affine(case))), sha, "[]", "2024-01-01T00:00:00+00:00"),
            )
    db.close()
    return root


def lesion_phantoms(cases: list[Case] | None = None) -> list:
    """The phantoms of ``cases`` again (same seeds → same images, labels and lesions)."""
    return [phantom_of(c) for c in (default_cases() if cases is None else cases)]
