"""Train/validation split by patient pseudonym: no patient's volumes are on both sides.

A patient goes to validation when a keyed hash of its pseudonym falls below
``val_fraction``, so the split is stable as the store grows (a patient never changes
side) and differs between seeds. Volumes without a patient pseudonym (NIfTI/NRRD inputs)
count as a patient of their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from medssl.preprocess.volume_cache import CachedVolume


def patient_group(volume: CachedVolume) -> str:
    return f"patient:{volume.patient}" if volume.patient else f"volume:{volume.volume_id}"


def split_by_patient(volumes: Sequence[CachedVolume], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices into ``volumes`` for training and validation.

    With at least two patients and ``0 < val_fraction < 1``, both sides get at least one
    patient; a single patient always trains.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction}: expected a value in [0, 1)")
    groups = sorted({patient_group(v) for v in volumes})
    score = {g: int(hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()[:15], 16) / 16**15 for g in groups}
    val = {g for g in groups if score[g] < val_fraction}
    if val_fraction > 0 and len(groups) >= 2 and not val:
        val = {min(groups, key=score.__getitem__)}
    if groups and len(val) == len(groups):  # training always keeps a patient
        val.discard(max(groups, key=score.__getitem__))
    train_idx = [i for i, v in enumerate(volumes) if patient_group(v) not in val]
    val_idx = [i for i, v in enumerate(volumes) if patient_group(v) in val]
    return train_idx, val_idx
