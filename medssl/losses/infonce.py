"""InfoNCE / NT-Xent with any number of views per sample, negatives from every rank.

Papers:
    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"
    (SimCLR, NT-Xent); Tian et al. 2020, "Contrastive Multiview Coding" and Khosla et al.
    2020, "Supervised Contrastive Learning" (several positives per anchor); Koromilas et al.
    2025, "A Principled Framework for Multi-View Contrastive Learning" (MV-InfoNCE, one term
    per sample).

Embeddings ``z: [N, V, D]`` hold V views of N samples; every other view of the same sample is
a positive, every view of every other sample (on every rank) a negative. Two forms:

- ``form="pairs"`` (default): each (anchor, positive) pair is a softmax classification of the
  positive among the ``N*V - 1`` other embeddings, averaged over all pairs. With ``V = 2``
  this is exactly SimCLR's NT-Xent (both directions averaged).
- ``form="joint"``: MV-InfoNCE of Koromilas et al.; one log-ratio per sample whose numerator
  sums ``exp(s/T)`` over all ordered positive pairs of the sample and whose denominator sums
  it over every non-self similarity of the sample's V views.

Known values when all embeddings are identical: ``log(N*V - 1)`` for "pairs",
``log((N*V - 1) / (V - 1))`` for "joint" (``N`` = global number of samples). With views
aligned and negatives orthogonal at low temperature, "joint" tends to 0 and "pairs" to
``log(V - 1)`` (its V - 1 equally good positives share one softmax; 0 for V = 2).

Distributed: the local ``[n, V, D]`` is gathered with :func:`gather_with_grad`; each rank's
loss is the mean over its own samples against the global batch, so the mean of the ranks'
losses is the single-process loss on the global batch, and DDP's gradient averaging gives
the single-process parameter gradient (see :mod:`medssl.losses.distributed`).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses.distributed import gather_with_grad, rank

InfoNCEForm = Literal["pairs", "joint"]


def stack_views(z: Tensor, z2: Tensor | None = None) -> Tensor:
    """Validate and return embeddings as ``[N, V, D]``.

    Args:
        z: ``[N, V, D]`` with ``V >= 2``, or the first view ``[N, D]`` when ``z2`` is given.
        z2: the second view ``[N, D]``, or None.
    """
    if z2 is not None:
        if z.ndim != 2 or z2.shape != z.shape:
            raise ValueError(
                f"two-view InfoNCE needs two [N, D] tensors of one shape, got {tuple(z.shape)} "
                f"and {tuple(z2.shape)}"
            )
        z = torch.stack((z, z2), dim=1)
    if z.ndim != 3:
        raise ValueError(
            f"InfoNCE embeddings must be [N, V, D] (or two [N, D]), got {tuple(z.shape)}"
        )
    n, v, d = z.shape
    if n < 1 or v < 2 or d < 1:
        raise ValueError(
            f"InfoNCE needs N >= 1 samples, V >= 2 views, D >= 1, got {tuple(z.shape)}"
        )
    return z


def check_temperature(temperature: float) -> None:
    """Raise ValueError unless ``temperature`` is a finite number > 0."""
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def view_masks(
    n_local: int, n_views: int, sample_offset: int, n_global: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Self and positive masks ``[n_local*V, n_global*V]`` of local rows against global columns.

    Row ``i*V + v`` is view v of local sample i = global sample ``sample_offset + i``;
    column ``j*V + u`` is view u of global sample j.
    """
    row_sample = torch.arange(n_local, device=device).repeat_interleave(n_views) + sample_offset
    row_view = torch.arange(n_views, device=device).repeat(n_local)
    col_sample = torch.arange(n_global, device=device).repeat_interleave(n_views)
    col_view = torch.arange(n_views, device=device).repeat(n_global)
    same_sample = row_sample[:, None] == col_sample[None, :]
    same_view = row_view[:, None] == col_view[None, :]
    return same_sample & same_view, same_sample & ~same_view


def similarity_logits(z_local: Tensor, z_global: Tensor, temperature: float) -> Tensor:
    """Cosine similarities / T: ``[n, V, D] x [N, V, D] -> [n*V, N*V]`` (local rows, all columns).

    Computed in float32 even under autocast: at T = 0.1 bf16 logits would carry errors of
    a few hundredths into the softmax.
    """
    with torch.autocast(device_type=z_local.device.type, enabled=False):
        a = F.normalize(z_local.reshape(-1, z_local.shape[-1]).float(), dim=-1)
        b = F.normalize(z_global.reshape(-1, z_global.shape[-1]).float(), dim=-1)
        return a @ b.T / temperature


def pairs_loss(logits: Tensor, self_mask: Tensor, positive_mask: Tensor, n_views: int) -> Tensor:
    """Mean over (anchor, positive) pairs of ``-log softmax`` of the positive among non-self."""
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive_log_prob = log_prob.masked_fill(~positive_mask, 0.0).sum(dim=1) / (n_views - 1)
    return -positive_log_prob.mean()


def joint_loss(logits: Tensor, self_mask: Tensor, positive_mask: Tensor, n_views: int) -> Tensor:
    """MV-InfoNCE: mean over samples of ``-log(sum_pos exp / sum_non-self exp)`` over its V rows."""
    n_local = logits.shape[0] // n_views
    logits = logits.masked_fill(self_mask, float("-inf"))
    per_sample = logits.reshape(n_local, -1)  # the V rows of one sample side by side
    positives = logits.masked_fill(~positive_mask, float("-inf")).reshape(n_local, -1)
    return (torch.logsumexp(per_sample, dim=1) - torch.logsumexp(positives, dim=1)).mean()


def info_nce_loss(
    z: Tensor,
    z2: Tensor | None = None,
    *,
    temperature: float = 0.1,
    gather: bool = True,
    form: InfoNCEForm = "pairs",
) -> Tensor:
    """InfoNCE over V views per sample with negatives from the whole (global) batch.

    Args:
        z: ``[N, V, D]`` embeddings (any scale; they are L2-normalised here), or the first
            view ``[N, D]`` when ``z2`` is given.
        z2: optional second view ``[N, D]`` (SimCLR's two-view call).
        temperature: softmax temperature ``T > 0`` applied to cosine similarities.
        gather: gather negatives from every rank with gradient (no-op on one process).
        form: "pairs" (SimCLR/SupCon-style, default) or "joint" (MV-InfoNCE); see module doc.

    Returns:
        Scalar loss: the mean over this rank's samples (see module doc for the DDP convention).
    """
    z = stack_views(z, z2)
    check_temperature(temperature)
    if form not in get_args(InfoNCEForm):
        raise ValueError(f"form must be 'pairs' or 'joint', got {form!r}")
    n_local, n_views, _ = z.shape
    z_global = gather_with_grad(z) if gather else z
    offset = rank() * n_local if gather else 0
    logits = similarity_logits(z, z_global, temperature)
    self_mask, positive_mask = view_masks(n_local, n_views, offset, z_global.shape[0], z.device)
    if form == "pairs":
        return pairs_loss(logits, self_mask, positive_mask, n_views)
    return joint_loss(logits, self_mask, positive_mask, n_views)
