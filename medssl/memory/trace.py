"""Peak memory of a forward/backward pass, measured on fake tensors: nothing is allocated.

A model is built on the ``meta`` device (parameters with shapes, no storage), turned into
fake tensors on the target device (:func:`fake_module`), and run on fake inputs of the
real shapes under :class:`LiveBytes`, a dispatch mode that adds the bytes of every new
storage an operator creates and subtracts them when the last tensor using that storage
dies. The result is what the caching allocator would have to hold at the busiest moment of
the pass: saved activations, the transient outputs of the op running then, gradients
created in backward; the dispatcher picks the same kernels (and autocast the same dtypes)
as on real tensors of that device, so attention paths and ``torch.utils.checkpoint``
recomputation are counted as they will run. Parameters and buffers that exist before the
trace are not counted (the estimate adds them once).

What fake tensors cannot see: allocator rounding and fragmentation, kernel workspaces the
libraries allocate outside torch (oneDNN, cuDNN), the CUDA context. :mod:`medssl.memory.estimate`
adds those as calibrated terms.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class TracedPeak:
    """Bytes of tensors an op created: ``peak`` at the busiest moment, ``end`` still alive
    when the traced function returned (e.g. parameter gradients)."""

    peak: int
    end: int


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created by operators while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, list[int]] = {}  # storage id -> [bytes, tensors using it]
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self._live[key]


@contextlib.contextmanager
def fake_device(device: torch.device | str) -> Iterator[FakeTensorMode]:
    """A fake-tensor mode in which factory calls make tensors on ``device`` without storage."""
    device = torch.device(device)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.device(device):
        yield mode


def fake_module(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` (built on ``meta``) with fake parameters and buffers on ``device``, in place.

    Call inside :func:`fake_device`. Each tensor is replaced once, also where submodules share
    it (a detector holding the task's encoder), which ``Module.to_empty`` would visit twice.
    Values are garbage: only shapes, dtypes and devices count.
    """
    device = torch.device(device)
    done: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is None:
                    continue
                if id(tensor) not in done:
                    empty = torch.empty_like(tensor, device=device)
                    done[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
                table[name] = done[id(tensor)]
    return module


def trace_peak(run: Callable[[], object]) -> TracedPeak:
    """Run ``run()`` (inside :func:`fake_device`) under :class:`LiveBytes`."""
    live = LiveBytes()
    with live:
        result = run()
        del result
    return TracedPeak(live.peak, live.now)


def trace_forward(forward: Callable[[torch.Tensor], object], shape: Sequence[int], device: torch.device | str, autocast: torch.dtype | None = None) -> TracedPeak:
    """The peak of ``forward`` without gradient on a fake input ``shape`` (not counted) on
    ``device``; a module's real parameters are read as fake tensors, not copied."""
    device = torch.device(device)
    with fake_device(device):
        x = torch.empty(tuple(int(s) for s in shape))
        amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), amp:
            return trace_peak(lambda: forward(x))


def module_bytes(module: nn.Module) -> tuple[int, int, int]:
    """``(parameter bytes, trainable parameter bytes, buffer bytes)``; works on ``meta``."""
    params = {id(p): p for p in module.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return total, trainable, buffers
