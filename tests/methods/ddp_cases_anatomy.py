"""DDP case for :mod:`tests.methods.ddp_run`: the anatomy method on 8 synthetic crops with body coordinates.

Crops ``i`` come from volume ``i % 4`` at anatomy ``i // 4`` (two places, four volumes), so
mined positives exist. Batches carry ``index``, which keys the method's masks, so a crop is
masked alike whichever rank the sampler hands it to.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from medssl.methods import Anatomy
from tests.methods.ddp_run import GLOBAL_BATCH
from tests.methods.synthetic import TINY_BACKBONES, TINY_HEADS, SyntheticCrops, make_item

PLACES = torch.tensor([[0.2, 0.3, 0.4], [0.7, 0.6, 0.5]])


class _BodyCrops(Dataset):
    def __init__(self, devices: int) -> None:
        self.devices = devices

    def __len__(self) -> int:
        return GLOBAL_BATCH

    def __getitem__(self, k: int) -> dict:
        i = k
        item = make_item(i, (16, 16, 8), 0, seed=0)
        g = torch.Generator().manual_seed(100 + i)
        item["body"] = PLACES[i // 4] + 0.02 * torch.randn(3, generator=g)
        item["volume"] = torch.tensor(i % 4)
        return item


def _collate(items: list[dict]) -> dict:
    return {
        key: torch.stack([it[key] for it in items]) for key in ("image", "index", "body", "volume")
    }


class BodyCrops(SyntheticCrops):
    def __init__(self, devices: int) -> None:
        super().__init__(batch_size=GLOBAL_BATCH // devices, num_batches=1)
        self.devices = devices

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _BodyCrops(self.devices), batch_size=self.batch_size, shuffle=False, collate_fn=_collate
        )


def case(devices: int):
    model = Anatomy(
        backbone="resenc3d",
        backbone_kwargs=TINY_BACKBONES["resenc3d"],
        num_prototypes=16,
        tolerance=0.1,
        search_radius=0.2,
        **TINY_HEADS,
    )
    return model, BodyCrops(devices)
