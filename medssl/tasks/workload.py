"""What one fine-tuning step encodes: the planner of ``medssl finetune``'s memory check
(:mod:`medssl.training.memory_check`).

The task is built on the ``meta`` device with the encoder of its artifact (read from
``artifact.json`` only: the weights are not loaded) and ``num_classes`` from the store's
labels, then one pass of ``batch_size`` crops goes through the whole network: encoder and
decoder with the softmax of every deep-supervision output (segmentation), encoder, FPN and
RetinaNet heads (detection), or the encoder alone (diagnosis: its guideline decoder works on
the pooled last map and is small). Freezing is honoured: a frozen encoder saves no activations.
Sliding-window validation is not part of the estimate (:mod:`medssl.memory.sliding` prices it
for ``medssl predict``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.backbones import create_backbone
from medssl.memory import EncoderPass, Workload
from medssl.memory.estimate import crop_bytes
from medssl.store.plan import load_or_make_plan
from medssl.tasks.detection import Detection
from medssl.tasks.layer_decay import freeze_below, layer_ids, num_layers
from medssl.tasks.segmentation import Segmentation
from medssl.training.memory_check import DataSettings, MemoryPlan, import_class, total_stride


def finetune_crop(data_path: str, data_args: dict) -> tuple[int, ...]:
    """The plan's crop (in-plane with ``spatial_dims`` 2) when the config gives none."""
    plan = load_or_make_plan(data_args["store"])
    return tuple(plan.crop_size_2d if int(data_args.get("spatial_dims", 3)) == 2 else plan.crop_size)


def finetune_workload(class_path: str, model_args: dict, data: DataSettings) -> tuple[nn.Module, Workload]:
    """The task ``class_path`` (built on the current device: call under ``torch.device("meta")``)
    and its step's one pass over ``data`` (module doc)."""
    args = dict(model_args)
    if args.get("encoder"):
        backbone = json.loads((Path(args["encoder"]) / "artifact.json").read_text())["backbone"]
        args.update(encoder=None, backbone=backbone["name"], backbone_kwargs=dict(backbone.get("kwargs") or {}))
    args.update(num_classes=_num_classes(data, args), class_names=None, class_values=None)
    task_class = import_class(class_path)
    crop = tuple(data.crop_size)
    batch = crop_bytes(data.batch_size, crop, itemsize=8)  # image fp32 + label
    if issubclass(task_class, Segmentation):
        model = task_class(**args)
        passes = [EncoderPass(model, data.batch_size, crop, loss=dice_ce_memory)]
        encoder = model.encoder
    elif issubclass(task_class, Detection):
        model = task_class(**args)
        passes = [EncoderPass(retinanet_maps(model.heads["det"].network), data.batch_size, crop)]
        encoder = model.encoder
    else:  # the encoder alone, frozen as the task would
        encoder = model = create_backbone(args.get("backbone") or "resenc3d", **(args.get("backbone_kwargs") or {}))
        freeze = args.get("freeze", "none")
        if freeze != "none":
            ids = layer_ids(encoder)
            trained = 0 if freeze == "all" else int(args.get("trainable_layers", 1))
            freeze_below(encoder, max(0, num_layers(ids) - trained))
        passes = [EncoderPass(encoder.forward_features, data.batch_size, crop)]
    return model, Workload(tuple(passes), batch, (total_stride(encoder),) * len(crop))


def dice_ce_memory(outputs: Tensor | list[Tensor]) -> Tensor:
    """What :func:`medssl.losses.segmentation.deep_supervision_loss` holds, without its
    data-dependent checks (fake tensors have no values): per output ``[B, K, *S]`` the
    int64 labels, cross-entropy's log-softmax, the softmax and the one-hot target of soft Dice."""
    total = torch.zeros(())
    for logits in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        labels = torch.zeros((logits.shape[0], *logits.shape[2:]), dtype=torch.long)
        ce = F.log_softmax(logits.float(), dim=1).mean()
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        dice = (probs * onehot).sum() / (probs.sum() + onehot.sum())
        total = total + ce + dice
    return total


def retinanet_maps(network: nn.Module):
    """MONAI's ``RetinaNet.forward`` (FPN, then the classification and box heads on every
    level) without its NaN check, which reads values: the head outputs ``[B, A*K, *S_l]``."""

    def forward(x: Tensor) -> list[Tensor]:
        maps = list(network.feature_extractor(x).values())
        cls, box = network.classification_head, network.regression_head
        return [cls.cls_logits(cls.conv(m)) for m in maps] + [box.bbox_reg(box.conv(m)) for m in maps]

    return forward


def _num_classes(data: DataSettings, args: dict) -> int:
    """The store's number of outputs (what the CLI links into the task), else the config's."""
    try:
        return int(data.data_class()(**dict(data.args)).num_classes)
    except Exception:  # noqa: BLE001 - a store the data module cannot read fails later, with its own message
        given = args.get("num_classes")
        return int(given) if given else 2


FINETUNE_MEMORY = MemoryPlan(finetune_workload, finetune_crop, "the CPU overlay -c configs/finetune/smoke.yaml")

__all__ = ["FINETUNE_MEMORY", "finetune_crop", "finetune_workload"]
