"""A queue of recent embeddings, so Sinkhorn codes balance over more than one small batch.

Paper: Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments" (SwAV), Section 3.1, "Working with small batches" (codes computed with the
features of earlier batches, only the batch's codes used in the loss); reference:
facebookresearch/swav ``main_swav.py`` (``queue_length``, ``epoch_queue_starts``).

Why: Sinkhorn gives each of the K prototypes ``B / K`` of a batch's mass, so with B samples
per step and ``B < K`` no code entry can exceed about ``B / K``: every sample is spread over
at least ``K / B`` prototypes and the swapped-prediction targets are almost uniform. Codes
computed over ``[queue; batch]`` (the stored embeddings of recent steps scored against the
*current* prototypes, then the batch), of which only the batch's rows are kept, can be sharp
and still balanced.

Contract, per training step (SwAV and Joint2D3D use it alike, one queue per prototype set)::

    queue_scores = queue.scores(prototypes, batch=b)   # None when off or still empty
    loss = swav_loss(scores, assign_crops, queue_scores=queue_scores, ...)
    queue.push([z_crop_i.detach() for i in assign_crops], step=self.global_step)  # after

``scores`` comes before ``push`` so a batch never meets itself in the queue. ``push`` stores
nothing before ``start_step`` and the queue is used as soon as it holds rows (the reference
waits until it is full; at 2-8 samples per step that would take thousands of steps).

Off: when ``length`` is 0 or the global batch (``batch × world size``) is at least K, since
the batch alone can then give every prototype a sample; the decision is logged once.

State: ``embeddings [C, L, D]`` (C assignment crops, newest rows first) and ``filled`` (rows
held) are registered buffers, so checkpoints hold them and a resumed run uses the queue an
uninterrupted run would.

Distributed: every rank holds the same *global* queue: ``push`` all-gathers the batch
embeddings of every rank (rank order), and ``scores`` gives rank r the rows ``r::W`` of it.
The ranks' shares together are the whole queue once, and :func:`~medssl.losses.swav.sinkhorn`
all-reduces its sums over ranks, so the codes equal those of one process on the whole queue
and the global batch. (The reference keeps a separate queue per rank and saves one file per
rank; here a per-rank buffer would be overwritten by DDP's buffer broadcast from rank 0 and
lost from rank 0's checkpoint, whereas the global queue is the same on every rank.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.losses.distributed import gather_with_grad, rank, world_size
from medssl.losses.swav import prototype_scores

log = logging.getLogger(__name__)


class FeatureQueue(nn.Module):
    """The last ``length`` embeddings of each assignment crop over the global batch (module doc).

    Args:
        num_crops: assignment crops C, one queue each (SwAV: the 2 global crops).
        length: rows L of each crop's queue over all ranks (0: no queue). The reference uses
            3840 with 256 samples per step; keep it at least K, so the queue alone can give
            every prototype about one sample.
        dim: embedding width D (the projector's output).
        num_prototypes: K of the prototypes the rows are scored against.
        start_step: optimiser step from which ``push`` stores embeddings (early features
            move fast and would go stale in the queue).
    """

    embeddings: Tensor
    filled: Tensor

    def __init__(
        self, num_crops: int, length: int, dim: int, num_prototypes: int, start_step: int = 0
    ) -> None:
        super().__init__()
        if num_crops < 1 or length < 0 or dim < 1 or num_prototypes < 2 or start_step < 0:
            raise ValueError(
                "FeatureQueue needs num_crops >= 1, length >= 0, dim >= 1, num_prototypes >= 2 "
                f"and start_step >= 0, got {num_crops}, {length}, {dim}, {num_prototypes}, "
                f"{start_step}"
            )
        self.length, self.num_prototypes, self.start_step = length, num_prototypes, start_step
        self.register_buffer("embeddings", torch.zeros(num_crops, length, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._logged: tuple[bool, int] | None = None

    def in_use(self, batch: int) -> bool:
        """True when the queue applies: ``length > 0`` and ``batch × world size < K``."""
        global_batch = batch * world_size()
        used = self.length > 0 and global_batch < self.num_prototypes
        if self._logged != (used, global_batch) and rank() == 0:
            log.info(
                "feature queue %s: global batch %d, %d prototypes, queue length %d, from step %d",
                "on" if used else "off",
                global_batch,
                self.num_prototypes,
                self.length,
                self.start_step,
            )
        self._logged = (used, global_batch)
        return used

    @torch.no_grad()
    def scores(self, prototypes: Tensor, batch: int) -> list[Tensor] | None:
        """This rank's share of the queue scored against ``prototypes [K, D]``.

        Returns:
            One ``[n_r, K]`` float32 tensor of cosine similarities per assignment crop (rows
            ``rank::world_size`` of the filled queue, no gradient), or None when the queue is
            off for this ``batch`` (local samples per step) or holds nothing yet.
        """
        if prototypes.ndim != 2 or prototypes.shape[0] != self.num_prototypes:
            raise ValueError(
                f"prototypes must be [{self.num_prototypes}, D], got {tuple(prototypes.shape)}"
            )
        if not self.in_use(batch):
            return None
        filled = int(self.filled)
        if filled == 0:
            return None
        share = self.embeddings[:, :filled][:, rank() :: world_size()].float()
        return [prototype_scores(rows, prototypes.float()) for rows in share]

    @torch.no_grad()
    def push(self, embeddings: Sequence[Tensor], step: int) -> None:
        """Store this step's embeddings, one ``[B, D]`` per assignment crop, newest first.

        No-op before ``start_step`` or while the queue is off. Under DDP every rank must call
        it (it all-gathers); the rows are L2-normalised and detached.
        """
        if len(embeddings) != self.embeddings.shape[0]:
            raise ValueError(
                f"push needs one [B, D] tensor per assignment crop ({self.embeddings.shape[0]}), "
                f"got {len(embeddings)}"
            )
        shape = embeddings[0].shape
        if len(shape) != 2 or shape[1] != self.embeddings.shape[2]:
            raise ValueError(
                f"embeddings must be [B, {self.embeddings.shape[2]}], got {tuple(shape)}"
            )
        if any(e.shape != shape for e in embeddings):
            raise ValueError(
                f"every crop's embeddings must be one shape, got {[tuple(e.shape) for e in embeddings]}"
            )
        if step < self.start_step or not self.in_use(shape[0]):
            return
        rows = torch.stack(
            [gather_with_grad(F.normalize(e.detach().float(), dim=1)) for e in embeddings]
        )  # [C, W * B, D], rank order
        n = min(rows.shape[1], self.length)
        queue = self.embeddings
        queue[:, n:] = queue[:, : self.length - n].clone()
        queue[:, :n] = rows[:, :n].to(queue.dtype)
        self.filled.clamp_(max=self.length - n).add_(n)
