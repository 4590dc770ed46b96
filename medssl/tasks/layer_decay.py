"""Depth of each encoder parameter, for freezing and layer-wise learning-rate decay.

Layer-wise decay (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT) scales the learning rate
of layer ``i`` of ``L`` by ``decay ** (L - i)``: the stem barely moves, the last stage
learns almost at the head's rate. A parameter's layer comes from its name in medssl's
backbones: ``stem.*`` / ``patch_embed.*`` / ``pos_embed`` are layer 0, ``stages.<i>.*``
(ResEnc), ``layers<k>.*`` (Swin) and ``blocks.<i>.*`` (ViT) count up from 1, and anything
after the last block (a final norm) takes the deepest layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_INDEXED = (re.compile(r"^stages\.(\d+)\."), re.compile(r"^blocks\.(\d+)\."), re.compile(r"^layers(\d+)\."))
_FIRST = ("stem", "patch_embed", "pos_embed", "cls_token", "mask_token")


def _indexed(name: str) -> int | None:
    for pattern in _INDEXED:
        match = pattern.match(name)
        if match:
            return int(match.group(1)) + (0 if pattern.pattern.startswith("^layers") else 1)
    return None


def layer_ids(encoder: nn.Module) -> dict[str, int]:
    """``{parameter name: layer}`` with layers ``0..L-1`` in order of depth."""
    names = [n for n, _ in encoder.named_parameters()]
    found = {n: _indexed(n) for n in names}
    deepest = max((v for v in found.values() if v is not None), default=0)
    ids = {}
    for name in names:
        if found[name] is not None:
            ids[name] = found[name]
        elif name.split(".")[0] in _FIRST:
            ids[name] = 0
        else:
            ids[name] = deepest + 1
    return ids


def num_layers(ids: dict[str, int]) -> int:
    return max(ids.values(), default=0) + 1


def freeze_below(encoder: nn.Module, first_trained: int) -> int:
    """Stop gradients of every parameter in a layer ``< first_trained``; returns how many were frozen."""
    ids = layer_ids(encoder)
    frozen = 0
    for name, param in encoder.named_parameters():
        if ids[name] < first_trained:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def layer_scales(names: Iterable[str], ids: dict[str, int], decay: float) -> dict[str, float]:
    """Learning-rate multiplier of each parameter: ``decay ** (L - layer)`` (1 for ``decay == 1``)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {decay}")
    top = num_layers(ids)
    return {n: decay ** (top - ids[n]) for n in names}
