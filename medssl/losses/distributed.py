"""Collectives the losses need, each a no-op when ``torch.distributed`` is not initialised.

Losses that contrast a sample against the *global* batch (InfoNCE negatives) or
normalise over it (Sinkhorn, DINO centering) call these; on one process they return their
input, so the same loss code runs unchanged from a laptop to many GPUs.

Gradient convention (what ``gather_with_grad`` guarantees): every rank computes its loss
over its *local* anchors against the gathered global batch, ``L_r``, and the global loss
is the mean ``L = mean_r L_r``. Backward through ``gather_with_grad`` sums, over ranks, the
gradient each rank's loss sends to a shard, so the local shard receives
``sum_r dL_r/dz_local = W * dL/dz_local`` (``W`` = world size). DDP then averages parameter
gradients over ranks (divides by ``W``), which yields exactly ``dL/dtheta`` of a single
process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group exists (and so collectives must be issued)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, as a new tensor (``x`` is untouched); ``x`` itself on one process.

    Statistics only: no gradient flows through the reduction (use under ``torch.no_grad``).
    """
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks, as a new tensor; ``x`` itself on one process."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the summed gradient of its shard."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        shards = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, x)
        ctx.shard_rows = x.shape[0]
        ctx.shard_index = dist.get_rank()
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank used every shard; the local shard's gradient is the sum of all ranks'
        # contributions. all_reduce + slice works on every backend (gloo has no reduce_scatter
        # for CPU tensors in all releases).
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.shard_index * ctx.shard_rows
        return grad[start : start + ctx.shard_rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to the local shard.

    Args:
        x: ``[n, ...]``, the same shape on every rank (DistributedSampler gives equal local
            batches; unequal shapes are not supported by ``all_gather``).

    Returns:
        ``[W * n, ...]`` ordered by rank, so rows ``rank() * n : (rank() + 1) * n`` are ``x``.
        On one process, ``x`` itself.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
