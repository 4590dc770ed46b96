"""A tiny deterministic data module for method tests: smooth random crops, optional views.

Item ``i`` is the same tensor in every run and process (seeded by ``(seed, i)``), so two runs
see the same data. ``step_keyed=True`` makes the batch a function of the trainer's global
step instead of the loader's position: a resumed run then sees what an uninterrupted run
saw at that step, whatever the loader's state (method-side resume determinism is tested
on its own; loader state is the data module's business).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

TINY_BACKBONES = {
    "resenc3d": {"channels": [4, 8, 16], "blocks_per_stage": [1, 1, 1], "strides": [1, 2, 2]},
    "vit3d": {"size": "s", "depth": 1, "img_size": 8, "patch_size": 4},
    "resenc2d": {"channels": [4, 8, 16], "blocks_per_stage": [1, 1, 1], "strides": [1, 2, 2]},
}
TINY_HEADS = {"hidden_dim": 32, "projection_dim": 16}
TINY_METHOD_ARGS = {
    "voco": {"grid_size": 2},
    "simclr": {},
    "swav": {"num_prototypes": 8, "num_local_crops": 2},
    "anatomy": {"num_prototypes": 16, "ema_momentum": 0.9},
    "joint2d3d": {"backbone": "resenc2d", "backbone_kwargs": TINY_BACKBONES["resenc2d"], "num_prototypes": 8, "num_volume_prototypes": 4, "aggregator_depth": 1, "serve_slices": 4},
}
CROPS = {3: [16, 16, 8], 2: [16, 16]}  # fit every tiny backbone and the methods' crops of them


def build(method: str, backbone: str = "resenc3d", **overrides):
    """A registered method on a tiny backbone and tiny heads (``overrides`` win)."""
    from medssl.methods import METHODS

    args = {
        "backbone": backbone,
        "backbone_kwargs": TINY_BACKBONES[backbone],
        **TINY_HEADS,
        **TINY_METHOD_ARGS[method],
        **overrides,
    }
    return METHODS[method](**args)


def smooth_crop(index: int, crop_size: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``[1, *crop_size]``: low-pass noise plus a bright blob whose position depends on ``index``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.randn(1, 1, *crop_size, generator=g)
    pool = F.avg_pool3d if len(crop_size) == 3 else F.avg_pool2d
    smooth = pool(noise, 3, stride=1, padding=1, count_include_pad=False)[0]
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in crop_size], indexing="ij")
    centre = torch.rand(len(crop_size), generator=g) * 1.2 - 0.6
    blob = torch.exp(-sum((x - c) ** 2 for x, c in zip(grids, centre)) / 0.1)
    return smooth + 2.0 * blob[None]


def view_of(crop: torch.Tensor, index: int, view: int, seed: int = 0) -> torch.Tensor:
    """A deterministic augmentation: random flips and additive noise."""
    g = torch.Generator().manual_seed(seed * 7_919 + index * 31 + view + 1)
    flips = [1 + a for a in range(crop.ndim - 1) if torch.rand(1, generator=g).item() < 0.5]
    out = crop.flip(flips) if flips else crop.clone()
    return out + 0.1 * torch.randn(out.shape, generator=g)


class _Crops(Dataset):
    def __init__(self, length: int, crop_size: tuple[int, ...], views: int, seed: int) -> None:
        self.length, self.crop_size, self.views, self.seed = length, crop_size, views, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return make_item(i, self.crop_size, self.views, self.seed)


def make_item(i: int, crop_size: tuple[int, ...], views: int, seed: int) -> dict:
    crop = smooth_crop(i, crop_size, seed)
    item = {"image": crop, "index": torch.tensor(i)}
    if views:
        item["views"] = [view_of(crop, i, v, seed) for v in range(views)]
    return item


def collate(items: list[dict]) -> dict:
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "index": torch.stack([it["index"] for it in items]),
    }
    if "views" in items[0]:
        batch["views"] = [
            torch.stack([it["views"][v] for it in items]) for v in range(len(items[0]["views"]))
        ]
    return batch


class SyntheticCrops(LightningDataModule):
    """``num_batches`` batches of ``batch_size`` crops ``[1, *crop_size]`` (module doc)."""

    def __init__(
        self,
        crop_size: tuple[int, ...] = (16, 16, 8),
        batch_size: int = 2,
        num_batches: int = 4,
        views: int = 0,
        seed: int = 0,
        step_keyed: bool = False,
    ) -> None:
        super().__init__()
        self.crop_size, self.batch_size, self.num_batches = (
            tuple(crop_size),
            batch_size,
            num_batches,
        )
        self.views, self.seed, self.step_keyed = views, seed, step_keyed

    def train_dataloader(self) -> DataLoader:
        dataset = _Crops(self.batch_size * self.num_batches, self.crop_size, self.views, self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=0, collate_fn=collate
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if not self.step_keyed:
            return batch
        start = self.trainer.global_step * self.batch_size
        return collate(
            [
                make_item(start + j, self.crop_size, self.views, self.seed)
                for j in range(self.batch_size)
            ]
        )
