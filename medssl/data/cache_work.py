"""What one cache worker process does: read a store volume, normalise, resample, write ``.npy`` + ``.json``.

The computation itself is :func:`medssl.inference.preprocess.preprocess`, shared with serving.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import torch

from medssl.atomic import atomic_write_bytes
from medssl.errors import MedsslError
from medssl.inference.preprocess import preprocess
from medssl.io.nifti import read_nifti
from medssl.store.plan import Plan, foreground_mask
from medssl.store.volume_row import VolumeRow

_CTX: dict = {}


def init_worker(store: str, root: str, plan_json: str) -> None:
    if multiprocessing.current_process().name != "MainProcess":
        torch.set_num_threads(1)  # parallel across volumes, not within one
    _CTX.update(store=Path(store), root=Path(root), plan=Plan.from_json(plan_json))


def cache_volume(row: VolumeRow) -> dict:
    """Cache one manifest row; returns its :class:`CachedVolume` fields, or ``{"volume_id", "error"}``."""
    from medssl.data.cache import body_box, cached_volume_meta, write_array

    store, root, plan = _CTX["store"], _CTX["root"], _CTX["plan"]
    volume_id = row.volume_id
    try:
        volume = read_nifti((store / row.path).read_bytes())
        if row.frame is not None:  # one frame of a 4D series
            volume.array = np.ascontiguousarray(volume.array[..., row.frame])
        box = body_box(foreground_mask(np.asarray(volume.array), row.modality))  # before normalising
        array, reached = preprocess(volume.array, volume.spacing, row.modality, plan)
        scale = [s / r for s, r in zip(volume.spacing, reached)] * 2  # store voxels -> cached voxels
        del volume
        write_array(root / f"{volume_id}.npy", array)
        meta = cached_volume_meta(row, array.shape, reached, float(array.min()), tuple(b * f for b, f in zip(box, scale)))
        atomic_write_bytes(root / f"{volume_id}.json", json.dumps(meta).encode())  # last: marks the volume done
        return meta
    except (MedsslError, OSError, ValueError, RuntimeError) as exc:
        return {"volume_id": volume_id, "error": f"{type(exc).__name__}: {exc}"}
