"""Peak memory of a training run, from its configuration, before anything is allocated.

A run's peak on the device it trains on is

    process now (CPU: resident set at the check)
  + parameters and buffers (students, EMA teachers, prototypes, queues)
  + AdamW state: 2 x trainable parameters, fp32 (after the first step it lives all run)
  + the step: the traced peak of one training step's encoder passes on fake tensors
    (:mod:`medssl.memory.trace`): inputs, saved activations for the crop x batch x views the
    method encodes, at the trainer's precision, with activation checkpointing as configured,
    EMA-teacher passes without gradient, parameter gradients made in backward; or the
    optimizer step (gradients + 2 x trainable in temporaries), whichever is larger
  + a calibrated slack for what fake tensors cannot see (allocator, kernel workspaces)

and, in host RAM (the same memory on a CPU run): loader workers (``num_workers`` x a process
each) and their prefetched batches (``num_workers x prefetch_factor`` collated batches, plus a
pinned copy with CUDA). The volume cache is memory-mapped: its pages are page cache the kernel
reclaims, not counted.

Error (benchmarks/memory_estimate.py, benchmarks/RESULTS.md "Memory: estimate vs measured
peak (issue 14)"): on the CPU the step's traced bytes are multiplied by ``CPU_STEP_SLACK``
and ``CPU_FIXED`` is added (oneDNN workspaces, glibc arenas, Lightning's first step); over 16
measured runs (smoke CNNs, swin3d-B at 64^3, the shipped segmentation and detection configs
at 96^3) the estimate of the process's peak lay within -11 % ... +16 % of ``ru_maxrss``
(tests hold it to +-35 %); errs high by up to ~0.1 GiB on tiny runs, low by up to 14 % of the
step with activation checkpointing (glibc keeps freed recomputation buffers). Not modelled:
more intra-op threads than one (per-thread workspaces), a cache being built in the same
process, sliding-window validation of fine-tuning, heads' activations beside the encoder's
(pooled projectors; segmentation decoders are traced). On a GPU the same terms are traced
with fake CUDA tensors plus ``GPU_STEP_SLACK`` and ``GPU_FIXED``: unverified, no GPU yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from medssl.errors import MedsslError
from medssl.memory.budget import GIB, Budget, resident_bytes
from medssl.memory.trace import TracedPeak, fake_device, fake_module, module_bytes, trace_peak

MIB = 1 << 20
CPU_STEP_SLACK = 1.15  # allocator rounding and fragmentation over the traced live bytes
CPU_FIXED = 160 * MIB  # oneDNN scratchpads, thread pools, Lightning's first step (measured)
GPU_STEP_SLACK = 1.10  # caching allocator blocks (unverified)
GPU_FIXED = 600 * MIB  # CUDA context and cuBLAS/cuDNN workspaces (unverified)
WORKER_BYTES = 300 * MIB  # one loader worker process (forked: torch, numpy, the dataset)
OPTIMIZER_COPIES = 2  # AdamW: exp_avg and exp_avg_sq per trainable parameter
STEP_TEMPORARIES = 2  # foreach AdamW: about two parameter-sized temporaries while stepping
STEP = "activations+grads"  # the term of the traced training step
MIXED_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE_DTYPES = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


class MemoryBudgetError(MedsslError):
    """A run whose estimated peak exceeds the memory it may use; the message is one line."""


@dataclass(frozen=True)
class EncoderPass:
    """One call of a training step: ``forward`` on ``count`` inputs ``[count, channels, *size]``.

    ``forward`` is bound to a module of the model the estimate traces (the student backbone,
    an EMA teacher, a whole task network); ``grad=False`` runs it without gradient (teachers).
    ``loss`` turns a pass's output into the scalar the surrogate backward starts from
    (default: the mean of every output tensor; segmentation mirrors Dice + cross-entropy).
    """

    forward: Callable[[Tensor], Any]
    count: int
    size: tuple[int, ...]
    grad: bool = True
    channels: int = 1
    loss: Callable[[Any], Tensor] | None = None


@dataclass(frozen=True)
class Workload:
    """What one training step encodes, in order, and what one collated batch weighs in host RAM."""

    passes: tuple[EncoderPass, ...]
    batch_bytes: int
    crop_multiple: tuple[int, ...] = ()  # each crop side stays a multiple of these (fitting)


@dataclass(frozen=True)
class Loader:
    """The data loader settings that cost host RAM."""

    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = False


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes on ``device`` (``terms`` in order, their sum is ``total``) and,
    for a GPU run, in host RAM (``host_terms``)."""

    device: str
    terms: dict[str, int]
    host_terms: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def host_total(self) -> int:
        return sum(self.host_terms.values())

    def breakdown(self) -> str:
        """``"activations 14.2 + parameters 0.1 + ..."`` GiB, largest first, terms >= 0.05 GiB."""
        parts = sorted(self.terms.items(), key=lambda kv: -kv[1])
        shown = [f"{name} {value / GIB:.1f}" for name, value in parts if value >= 0.05 * GIB]
        return " + ".join(shown) or "all terms < 0.05"

    def fits(self, budget: Budget, host: Budget | None = None) -> bool:
        device_ok = self.total <= budget.total
        return device_ok and (host is None or not self.host_terms or self.host_total <= host.total)


def surrogate_loss(output: Any) -> Tensor:
    """The mean of every tensor in ``output``, in fp32: a scalar whose backward reaches every
    saved activation, as a real loss does."""
    leaves = [t for t in _tensors(output) if t.is_floating_point()]
    return sum((t.float().mean() for t in leaves), torch.zeros((), device=leaves[0].device))


def _tensors(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def trace_step(model: nn.Module, workload: Workload, device: torch.device, precision: str = "32-true") -> TracedPeak:
    """The traced peak of one training step of ``model`` (built on ``meta``; turned into fake
    tensors here, so it is spent): every pass in order, then one backward from the sum of
    the losses of the passes with gradient."""
    mixed = MIXED_DTYPES.get(precision)
    with fake_device(device):
        fake_module(model, device)
        if precision in TRUE_DTYPES:
            model.to(TRUE_DTYPES[precision])
        dtype = TRUE_DTYPES.get(precision, torch.float32)

        def step() -> None:
            losses = []
            for p in workload.passes:
                x = torch.empty((p.count, p.channels, *p.size), dtype=dtype)
                amp = torch.autocast(device.type, dtype=mixed) if mixed else contextlib.nullcontext()
                with torch.set_grad_enabled(p.grad), amp:
                    out = p.forward(x)
                if p.grad:
                    losses.append((p.loss or surrogate_loss)(out))
                del out, x
            if losses:
                sum(losses).backward()

        return trace_peak(step)


def estimate_training(
    model: nn.Module,
    workload: Workload,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    loader: Loader = Loader(),
    world_size: int = 1,
    sharded: bool = False,
    processes_per_host: int = 1,
    baseline: int | None = None,
) -> MemoryEstimate:
    """The peak of a training run of ``model`` (built on ``meta``) on ``device`` (module doc).

    ``sharded``: FSDP, parameters, gradients and optimizer state divided by ``world_size``.
    ``processes_per_host``: training processes sharing this host's RAM (CPU DDP/FSDP, or one
    per local GPU). ``baseline``: host bytes of one process before the run allocates
    (default: this process's resident set now).
    """
    device = torch.device(device)
    params, trainable, buffers = module_bytes(model)
    share = world_size if sharded else 1
    traced = trace_step(model, workload, device, precision)
    step = max(traced.peak, traced.end + STEP_TEMPORARIES * trainable // share)
    cpu = device.type == "cpu"
    slack, fixed = (CPU_STEP_SLACK, CPU_FIXED) if cpu else (GPU_STEP_SLACK, GPU_FIXED)
    baseline = resident_bytes() if baseline is None else baseline
    device_terms = {
        "parameters": (params + buffers) // share,
        "AdamW state": OPTIMIZER_COPIES * trainable // share,
        STEP: int(step * slack),
        "batch": workload.batch_bytes,
        "workspaces": fixed,
    }
    host_terms = {
        "process": baseline,
        "loader workers": loader.num_workers * WORKER_BYTES,
        "prefetched batches": loader.num_workers * loader.prefetch_factor * workload.batch_bytes,
    }
    if not cpu and loader.pin_memory:
        host_terms["pinned batch"] = workload.batch_bytes
    if cpu:  # one memory: the device terms are host RAM too, once per training process
        terms = {**host_terms, **device_terms}
        return MemoryEstimate(str(device), {k: v * processes_per_host for k, v in terms.items()})
    host = {k: v * processes_per_host for k, v in host_terms.items()}
    return MemoryEstimate(str(device), device_terms, host)


def crop_bytes(count: int, size: Sequence[int], channels: int = 1, itemsize: int = 4) -> int:
    """Bytes of ``count`` crops ``[channels, *size]`` (a collated batch)."""
    voxels = 1
    for s in size:
        voxels *= int(s)
    return count * channels * voxels * itemsize
