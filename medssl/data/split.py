"""Train/validation split by patient pseudonym: no patient's volumes are on both sides.

A patient goes to validation when a keyed hash of its pseudonym falls below
``val_fraction``, so the split is stable as the store grows (a patient never changes
side) and differs between seeds. Volumes without a patient pseudonym (NIfTI/NRRD inputs)
count as a patient of their own.

A label table may fix the sides instead (``split: train|val`` per case, docs/labels.md):
when any volume of the store has one, the fixed sides decide and ``val_fraction`` only
switches validation on (> 0) or off (0). A benchmark then validates on the same cases on
every machine, whatever project key pseudonymised them; volumes the table did not place
train, and a patient with volumes on both sides is an error.

Both sides come back in content order (:func:`content_id`: the sha256 of the stored file,
which no project key changes), not in pseudonym order: the data modules draw crops by
position in these lists, so a store ingested again under a new key (a fresh ``demo-out``)
trains on the same crops in the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from medssl.errors import ConfigError
from medssl.preprocess.volume_cache import CachedVolume
from medssl.types import SplitSide


def content_id(volume: CachedVolume) -> str:
    """A volume's identity that no project key changes: its stored file's sha256 (and the
    frame suffix ``.t0003`` of a frame of a 4D series)."""
    _, dot, frame = volume.volume_id.partition(".")
    return f"{volume.sha256}{dot}{frame}"


def patient_group(volume: CachedVolume) -> str:
    return f"patient:{volume.patient}" if volume.patient else f"volume:{volume.volume_id}"


def split_by_patient(
    volumes: Sequence[CachedVolume], val_fraction: float, seed: int = 0, fixed: Mapping[str, SplitSide] | None = None
) -> tuple[list[int], list[int]]:
    """Indices into ``volumes`` for training and validation.

    With at least two patients and ``0 < val_fraction < 1``, both sides get at least one
    patient; a single patient always trains. ``fixed`` (``volume_id -> side``, from
    :func:`medssl.store.labels.read_split`): when it places any of ``volumes`` and
    ``val_fraction > 0``, its sides decide (a frame ``<id>.t0003`` takes its series' side).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction}: expected a value in [0, 1)")
    sides = {i: fixed.get(v.volume_id.partition(".")[0]) for i, v in enumerate(volumes)} if fixed else {}
    if val_fraction > 0 and any(sides.values()):
        return _in_content_order(volumes, *_fixed_split(volumes, sides))
    groups = sorted({patient_group(v) for v in volumes})
    score = {g: int(hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()[:15], 16) / 16**15 for g in groups}
    val = {g for g in groups if score[g] < val_fraction}
    if val_fraction > 0 and len(groups) >= 2 and not val:
        val = {min(groups, key=score.__getitem__)}
    if groups and len(val) == len(groups):  # training always keeps a patient
        val.discard(max(groups, key=score.__getitem__))
    train_idx = [i for i, v in enumerate(volumes) if patient_group(v) not in val]
    val_idx = [i for i, v in enumerate(volumes) if patient_group(v) in val]
    return _in_content_order(volumes, train_idx, val_idx)


def _in_content_order(volumes: Sequence[CachedVolume], *sides: list[int]) -> tuple[list[int], ...]:
    return tuple(sorted(side, key=lambda i: content_id(volumes[i])) for side in sides)


def _fixed_split(volumes: Sequence[CachedVolume], sides: Mapping[int, SplitSide | None]) -> tuple[list[int], list[int]]:
    val_groups = {patient_group(volumes[i]) for i, side in sides.items() if side == SplitSide.VAL}
    both = [i for i, side in sides.items() if side == SplitSide.TRAIN and patient_group(volumes[i]) in val_groups]
    if both:
        raise ConfigError(
            f"label table split: {len(both)} volume(s) marked 'train' belong to a patient with a volume marked 'val'; "
            "a patient's volumes must all be on one side"
        )
    val_idx = [i for i, v in enumerate(volumes) if patient_group(v) in val_groups]
    train_idx = [i for i, v in enumerate(volumes) if patient_group(v) not in val_groups]
    return train_idx, val_idx
