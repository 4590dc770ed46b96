"""Teacher refinement of anatomy pairs in the training step: each partner crop moved to where its anchor best matches.

Alice (Jiang et al. 2023) finds a point's match in another volume with a pretrained anatomical
embedding (SAM, Yan et al. 2022) and keeps it only when the match score passes a threshold.
medssl's pairs start from a body-coordinate prior (:mod:`medssl.data.anatomy_pairs`); with the
data module's ``refine_margin`` > 0 each partner also brings its window of volume B, the crop
grown by the margin on every side around the prior. Here the EMA teacher encodes the anchor
crops and the partner windows (no gradient), :func:`~medssl.data.anatomy_pairs.refine_by_embedding`
slides each anchor's last token map over its window's, and where the best mean cosine reaches
the threshold the partner crop is cut from the window at that shift (tokens x the backbone's
total stride, in voxels); otherwise the prior crop stands. The batch then gets the data
module's own seeded augmentation, which the data module holds back for batches with windows,
so refined partners are augmented like any crop, and a batch whose partners do not move is
augmented exactly as without refinement.

Shapes: ``image`` ``[N, 1, *S]``, ``window`` ``[M, 1, *(S + 2 margin)]``, ``pairs`` ``[M, 2]``
(anchor row, partner row), token maps ``[M, C, *g]``. Pairs never cross ranks (an item holds
both crops), so each rank refines its own; only the logged shares are summed over ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from medssl.data.anatomy_pairs import refine_by_embedding
from medssl.losses import all_reduce_sum
from medssl.methods.masked_patches import patch_stride
from medssl.types import BatchKey

TokenMap = Callable[[Tensor], Tensor]  # [M, 1, *S] -> [M, C, *g], the teacher's last feature map
Augment = Callable[[dict], dict]  # a data module's augment_batch


@dataclass(frozen=True)
class Refinement:
    """What :func:`refine_partners` did: the new crops and, per pair, the shift and its score."""

    image: Tensor  # [N, 1, *S], moved partner rows replaced
    shift: Tensor  # [M, 3] int64 voxels from the prior crop's start (0 where it stands)
    confidence: Tensor  # [M] float32 best mean cosine of the anchor's tokens in the window
    moved: Tensor  # [M] bool: confident and shifted


def window_geometry(
    size: tuple[int, ...], window: tuple[int, ...], grid: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """``(stride, margin)`` in voxels per axis for crops of ``size`` with last map ``grid`` and
    windows of ``window``; ValueError unless the margin is a whole number of tokens per side."""
    stride = list(patch_stride(size, grid))
    room = [w - s for s, w in zip(size, window)]
    if any(r < 0 or r % 2 or (r // 2) % st for r, st in zip(room, stride)):
        raise ValueError(
            f"partner windows {list(window)} around crops {list(size)}: the margin per side must "
            f"be a multiple of the backbone's total stride {stride} (data.refine_margin)"
        )
    return stride, [r // 2 for r in room]


@torch.no_grad()
def refine_partners(
    token_map: TokenMap, image: Tensor, windows: Tensor, pairs: Tensor, threshold: float
) -> Refinement:
    """Move each partner (``image[pairs[j, 1]]``) to its anchor's best confident match in ``windows[j]``."""
    if image.ndim != 5 or windows.ndim != 5 or pairs.shape != (len(windows), 2):
        raise ValueError(
            f"refinement needs image [N, 1, *S], window [M, 1, *W] and pairs [M, 2], got "
            f"{tuple(image.shape)}, {tuple(windows.shape)} and {tuple(pairs.shape)}"
        )
    size, window = tuple(image.shape[2:]), tuple(windows.shape[2:])
    pairs = pairs.long()
    anchors = token_map(image[pairs[:, 0]])
    stride, margin = window_geometry(size, window, tuple(anchors.shape[2:]))
    maps = token_map(windows.to(image.dtype))
    expected = [g + 2 * m // st for g, m, st in zip(anchors.shape[2:], margin, stride)]
    if list(maps.shape[2:]) != expected:
        raise ValueError(
            f"the teacher maps windows {list(window)} to {list(maps.shape[2:])} tokens, expected "
            f"{expected}: a backbone whose map does not scale with its input cannot refine"
        )
    out, stride_t = image.clone(), torch.tensor(stride)
    shifts, scores, moved = [], [], []
    for j in range(len(pairs)):
        shift, confidence, _ = refine_by_embedding(anchors[j], maps[j], threshold)
        voxels = shift * stride_t
        if bool(voxels.any()):
            box = [slice(m + int(v), m + int(v) + s) for m, v, s in zip(margin, voxels, size)]
            out[pairs[j, 1]] = windows[j][(slice(None), *box)].to(out.dtype)
        shifts.append(voxels)
        scores.append(confidence.float())
        moved.append(bool(voxels.any()))
    return Refinement(
        out, torch.stack(shifts), torch.stack(scores), torch.tensor(moved, device=image.device)
    )


def refined_batch(
    batch: dict, token_map: TokenMap, threshold: float, active: bool, augment: Augment | None
) -> tuple[dict, dict[str, Tensor]]:
    """The batch with its partners refined (when ``active``) and then augmented, and log terms.

    A batch without ``window`` is returned as it is. Otherwise ``window`` and ``pairs`` are
    dropped; when ``active`` the partners are refined (:func:`refine_partners`), their ``box``
    moved with them (``body`` stays the prior's, the pair's shared place) and the terms
    ``refine_moved`` (share of partners moved) and ``refine_confidence`` (mean best score),
    both over the global batch, returned; then a batch still holding its ``seed`` goes
    through ``augment`` (the data module's ``augment_batch``).
    """
    if BatchKey.WINDOW not in batch:
        return batch, {}
    batch = dict(batch)
    windows, pairs = batch.pop(BatchKey.WINDOW), batch.pop(BatchKey.PAIRS)
    terms: dict[str, Tensor] = {}
    if active:
        result = refine_partners(token_map, batch[BatchKey.IMAGE], windows, pairs, threshold)
        batch[BatchKey.IMAGE] = result.image
        if BatchKey.BOX in batch:
            box = batch[BatchKey.BOX].clone()
            box[pairs[:, 1].long()] += result.shift.repeat(1, 2).to(box)
            batch[BatchKey.BOX] = box
        device = result.confidence.device
        sums = torch.stack([
            result.moved.float().sum(), result.confidence.sum(),
            torch.tensor(float(len(pairs)), device=device),
        ])  # fmt: skip
        moved, confidence, count = all_reduce_sum(sums).unbind()
        terms = {"refine_moved": moved / count, "refine_confidence": confidence / count}
    if BatchKey.SEED in batch:
        if augment is None:
            raise ValueError(
                "a batch with partner windows arrived unaugmented, but the trainer's data module "
                "has no augment_batch to augment it after refinement"
            )
        batch = augment(batch)
    return batch, terms


def data_module_augment(trainer) -> Augment | None:
    """The trainer's data module's ``augment_batch``, None without a trainer or one."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return getattr(datamodule, "augment_batch", None)
