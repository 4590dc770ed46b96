"""DDP case for ``ddp_run.py``: Joint2D3D on one fixed global batch of 8 slice stacks + 8 images.

Crop boxes and slice masks are keyed per sample, so they do not depend on the rank split; the
batched augmentation draws per rank, so it is off here (``augment_crops=False``).
:func:`queue_case`: the same step with both Sinkhorn queues filled and on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from medssl.data.joint import collate_joint
from medssl.methods import Joint2D3D
from tests.methods.synthetic import TINY_BACKBONES, TINY_HEADS, smooth_crop

GLOBAL_BATCH, SLICES = 8, 4


def joint_item(i: int) -> dict:
    """Volume ``i`` as a stack of SLICES slices ``[S, 1, 16, 16]`` and one image ``[1, 1, 16, 16]``."""
    volume = smooth_crop(i, (16, 16, 8))  # [1, 16, 16, 8]
    index = torch.tensor([0, 2, 5, 7])
    return {
        "slices": volume[..., index].permute(3, 0, 1, 2).contiguous(),
        "positions": index.float() / 7,
        "slice_keys": torch.tensor(1000 + i),
        "images": smooth_crop(100 + i, (16, 16))[None],
        "image_keys": torch.tensor([2000 + i]),
    }


class _Items(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return joint_item(i)


class JointBatches(LightningDataModule):
    def __init__(self, batch_size: int, num_batches: int) -> None:
        super().__init__()
        self.batch_size, self.num_batches = batch_size, num_batches

    def train_dataloader(self) -> DataLoader:
        dataset = _Items(self.batch_size * self.num_batches)
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate_joint
        )


def tiny_joint(**overrides) -> Joint2D3D:
    args = {
        "backbone": "resenc2d",
        "backbone_kwargs": TINY_BACKBONES["resenc2d"],
        **TINY_HEADS,
        "num_prototypes": 8,
        "num_volume_prototypes": 4,
        "aggregator_depth": 1,
        "serve_slices": 4,
        "freeze_prototypes_steps": 0,
        **overrides,
    }
    return Joint2D3D(**args)


def case(devices: int):
    model = tiny_joint(augment_crops=False)
    return model, JointBatches(GLOBAL_BATCH // devices, devices)


def queue_case(devices: int):
    """Both feature queues pre-filled (one global queue, the same on every rank) and on from
    step 0; K above the global batch (40 regions, 8 volumes), so the codes use them."""
    model = tiny_joint(
        augment_crops=False,
        num_prototypes=64,
        num_volume_prototypes=16,
        queue_length=12,
        volume_queue_length=6,
        queue_start_step=0,
    )
    fill_queues(model)
    return model, JointBatches(GLOBAL_BATCH // devices, devices)


def fill_queues(model: Joint2D3D, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for queue in (model.queue, model.volume_queue):
        rows = torch.randn(queue.embeddings.shape, generator=g)
        queue.embeddings.copy_(F.normalize(rows, dim=-1))
        queue.filled.fill_(queue.length)
