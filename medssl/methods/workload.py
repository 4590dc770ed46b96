"""What one training step of each SSL method encodes: the planner of ``medssl pretrain``'s
memory check (:mod:`medssl.training.memory_check`).

For a method built on the ``meta`` device and the data module's settings, the passes in the
order the method's ``training_step`` makes them (inputs ``[count, 1, *size]``, with or
without gradient, through the student or the EMA teacher). Heads on pooled features
(projectors, prototypes) are left out: they are small next to a 3D encoder's activations.

- SimCLR: V views x N crops, one pass (``views`` of the data module, else ``num_views``).
- VoCo: per region, K = grid_size^grid_dims base crops + ``num_random_crops``, at the tile size
  (or ``crop_size``); ``cvpr`` runs the EMA teacher backbone on the same crops without gradient.
- SwAV: 2 global crops (``global_crop_size``, default the region) and ``num_local_crops`` local
  ones (``local_crop_size``, default half the region), two passes.
- Anatomy: the EMA teacher on 2 views x N crops without gradient, then the student on them.
- Joint2D3D: regions = B x ``num_slices`` slices + B x ``images_per_item`` 2D crops (both parts,
  an upper bound for a store with one kind), 2 global + ``num_local_crops`` local crops each.

N = ``batch_size x crops_per_volume`` (x 2 with the anatomy pair module: anchor and partner).
"""

from __future__ import annotations

import logging

from torch import nn

from medssl.data.anatomy_pairs import AnatomyPairDataModule
from medssl.data.joint import JointDataModule
from medssl.data.pretrain import PretrainSliceDataModule
from medssl.memory import EncoderPass, Workload
from medssl.memory.estimate import crop_bytes
from medssl.methods.anatomy import Anatomy
from medssl.methods.base import SSLMethod
from medssl.methods.joint2d3d import Joint2D3D
from medssl.methods.simclr import SimCLR
from medssl.methods.swav import SwAV
from medssl.methods.voco import VoCo
from medssl.store.plan import load_or_make_plan
from medssl.training.memory_check import DataSettings, MemoryPlan, import_class, total_stride

log = logging.getLogger("medssl.memory")


def pretrain_crop(data_path: str, data_args: dict) -> tuple[int, ...]:
    """The crop a pretraining data module samples when its config gives none: the plan's
    (``STORE/plan.json``, made now if missing, as ``prepare_data`` would)."""
    data_class = import_class(data_path)
    flat = issubclass(data_class, (PretrainSliceDataModule, JointDataModule))
    plan = load_or_make_plan(data_args["store"], from_images=issubclass(data_class, JointDataModule))
    if issubclass(data_class, PretrainSliceDataModule) and int(data_args.get("slice_axis", 2)) != 2:
        axis = int(data_args["slice_axis"])
        return tuple(s for a, s in enumerate(plan.crop_size) if a != axis)
    return tuple(plan.crop_size_2d if flat else plan.crop_size)


def pretrain_workload(class_path: str, model_args: dict, data: DataSettings) -> tuple[nn.Module, Workload]:
    """The method ``class_path(**model_args)`` (built on the current device: call under
    ``torch.device("meta")``) and its step's passes on ``data``."""
    model = import_class(class_path)(**model_args)
    crop = tuple(data.crop_size)
    stride = total_stride(model.backbone)
    multiple = (stride,) * len(crop)
    crops = data.batch_size * int(data.get("crops_per_volume", 1))
    if issubclass(data.data_class(), AnatomyPairDataModule):
        crops *= 2
    views = int(data.get("views", 0))
    batch = crop_bytes(crops * max(views, 1), crop)
    backbone, features = model.backbone, model.backbone.forward_features
    if isinstance(model, VoCo):
        h = model.hparams
        gridded = range(h.grid_dims)
        tile = tuple(s // h.grid_size if a in gridded else s for a, s in enumerate(crop))
        size = tuple(h.crop_size or tile)
        count = crops * (h.grid_size**h.grid_dims + h.num_random_crops)
        passes = [EncoderPass(features, count, size)]
        if "backbone" in model.teacher:
            passes.append(EncoderPass(model.teacher["backbone"].forward_features, count, size, grad=False))
        multiple = tuple(stride * h.grid_size if a in gridded else stride for a in range(len(crop)))
    elif isinstance(model, (SwAV, Joint2D3D)):
        regions = crops
        if isinstance(model, Joint2D3D):
            regions = data.batch_size * (int(data.get("num_slices", 1)) + int(data.get("images_per_item", 0)))
            batch = crop_bytes(regions, crop)
        h = model.hparams
        global_size = tuple(h.global_crop_size or crop)
        local_size = tuple(h.local_crop_size or (max(1, s // 2) for s in crop))
        passes = [EncoderPass(backbone, 2 * regions, global_size)]
        if h.num_local_crops:
            passes.append(EncoderPass(backbone, h.num_local_crops * regions, local_size))
    elif isinstance(model, Anatomy):
        passes = [
            EncoderPass(model.teacher["backbone"].forward_features, 2 * crops, crop, grad=False),
            EncoderPass(features, 2 * crops, crop),
        ]
    elif isinstance(model, SimCLR):
        passes = [EncoderPass(backbone, (views or model.hparams.num_views) * crops, crop)]
    elif isinstance(model, SSLMethod):
        log.warning("memory: %s declares no workload; estimating one pass over the batch", type(model).__name__)
        passes = [EncoderPass(features, crops * max(views, 1), crop)]
    else:
        raise TypeError(f"{class_path} is not an SSL method")
    return model, Workload(tuple(passes), batch, multiple)


PRETRAIN_MEMORY = MemoryPlan(pretrain_workload, pretrain_crop, "the CPU overlay -c configs/pretrain/smoke.yaml")

__all__ = ["PRETRAIN_MEMORY", "pretrain_crop", "pretrain_workload"]
