"""Phantom stores and probe sets for method tests (tools.phantom anatomy with its label maps).

The store's volumes share one spacing, so the plan keeps it and the cached arrays lie on the
phantoms' own voxel grid: the phantom label maps label the cached (normalised) voxels.
"""

from __future__ import annotations

from pathlib import Path

from medssl.data.pretrain import PretrainDataModule
from medssl.data.probe_set import ProbeSet, make_probe_set
from tests.data.synthetic_store import Spec, write_store
from tools.phantom import ORGAN_LABELS, make_ct_phantom

SHAPE, SPACING = (48, 48, 32), (2.0, 2.0, 3.0)
PROBE_ORGANS = ("lung_right", "lung_left", "heart", "liver", "vertebrae", "muscle")


def phantom_store(root: Path, n: int = 4) -> Path:
    """A store of ``n`` CT phantoms (patients p0..), its plan and preprocessing cache built."""
    write_store(root, [Spec(SHAPE, SPACING, "CT", f"p{i}", seed=i) for i in range(n)])
    PretrainDataModule(str(root), num_workers=0, progress=False).prepare_data()
    return root


def phantom_probe_set(
    store: Path, crop_size: tuple[int, ...] = (16, 16, 16), per_class: int = 12, seed: int = 0
) -> ProbeSet:
    """Crops of the cached volumes centred on organs, labelled by organ, grouped by volume."""
    dm = PretrainDataModule(str(store), num_workers=0, progress=False, val_fraction=0.0)
    dm.setup("fit")
    volumes, labels, pads = [], [], []
    for i, volume in enumerate(dm.index.volumes):
        volumes.append(dm.index.open(volume).astype("float32"))
        labels.append(
            make_ct_phantom(SHAPE, SPACING, seed=int(volume.volume_id[1:]), n_lesions=0).labels
        )
        pads.append(volume.pad_value)
    names = {value: name for value, name in ORGAN_LABELS.items() if name in PROBE_ORGANS}
    return make_probe_set(
        volumes, labels, crop_size, names, per_class=per_class, pad_value=pads, seed=seed
    )
