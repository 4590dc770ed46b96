"""The memory check of ``medssl pretrain`` and ``medssl finetune``: stop before allocating.

Before the model, the data module and the trainer are instantiated (so before any run
folder exists), the run's peak memory is estimated from its configuration
(:mod:`medssl.memory.estimate`: the model built on the ``meta`` device, one training step
traced on fake tensors) and compared with what the device it trains on has
(:mod:`medssl.memory.budget`). When it does not fit, the command stops with one line: the
estimate, the budget, and settings that would fit (:mod:`medssl.memory.fit`); with
``--auto-fit`` it applies those settings instead and says which. ``--memory-budget GB`` (or
``MEDSSL_MEMORY_BUDGET_GB``) replaces the machine's figure.

Which passes a step makes is the command's *planner*: ``(model class path, model arguments,
data settings) -> (model on meta, Workload)`` (:mod:`medssl.methods.workload`,
:mod:`medssl.tasks.workload`). The check runs once per host: not in the extra rank
processes a DDP launcher starts (``LOCAL_RANK`` > 0).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jsonargparse import Namespace
from torch import nn

from medssl.memory import (
    GIB,
    Budget,
    Loader,
    MemoryBudgetError,
    MemoryEstimate,
    RunSettings,
    Workload,
    device_budget,
    estimate_training,
    host_budget,
    shrink_steps,
)
from medssl.memory.budget import resident_bytes
from medssl.memory.estimate import STEP

log = logging.getLogger("medssl.memory")
MAX_VERIFY = 4  # traced checks of extrapolated settings before giving up on fitting


@dataclass(frozen=True)
class DataSettings:
    """The data module's settings that cost memory, with its crop resolved (the plan's when
    the config gives none); ``args`` are all of its ``init_args``."""

    class_path: str
    batch_size: int
    crop_size: tuple[int, ...]
    args: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.args.get(name)
        return default if value is None else value

    def data_class(self) -> type:
        return import_class(self.class_path)

    @property
    def loader(self) -> Loader:
        workers = int(self.get("num_workers", 0))
        return Loader(workers, int(self.get("prefetch_factor", 2)) if workers else 0, bool(self.get("pin_memory", False)))


Planner = Callable[[str, dict, DataSettings], tuple[nn.Module, Workload]]
CropResolver = Callable[[str, Mapping[str, Any]], tuple[int, ...]]


@dataclass(frozen=True)
class MemoryPlan:
    """How a command's runs are priced: ``workload`` builds the model on ``meta`` and says what a
    step encodes; ``crop`` resolves the data module's crop when the config gives none;
    ``smaller`` names a config that fits small machines (for the refusal message)."""

    workload: Planner
    crop: CropResolver
    smaller: str


@dataclass(frozen=True)
class Target:
    """Where the run trains: one device's kind, precision, and how many ranks share what."""

    device: torch.device
    precision: str
    world_size: int = 1
    sharded: bool = False
    processes_per_host: int = 1


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_memory(config: Namespace, plan: MemoryPlan, auto_fit: bool = False, budget_gb: float | None = None) -> MemoryEstimate | None:
    """Estimate the run ``config`` describes; log it when it fits, else apply ``--auto-fit``
    settings to ``config`` or raise.

    Raises:
        MemoryBudgetError: the estimate exceeds the budget (and ``auto_fit`` is off, or
            nothing fits); one line with the estimate, the budget and settings that fit.
    """
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0:
        return None
    trainer = config.get("trainer") or Namespace()
    target = resolve_target(trainer)
    if target is None:
        return None
    model_path, model_args = config.model.class_path, _plain(config.model.init_args)
    data_path, data_args = config.data.class_path, _plain(config.data.init_args)
    try:  # a store the data module cannot read fails later, with the data module's own message
        crop = tuple(int(s) for s in data_args["crop_size"]) if data_args.get("crop_size") else plan.crop(data_path, data_args)
    except Exception as exc:  # noqa: BLE001
        log.debug("no memory check: the crop is unknown (%s)", exc)
        return None
    data = DataSettings(data_path, int(data_args.get("batch_size") or 1), crop, data_args)
    budget = device_budget(target.device, budget_gb)
    host = host_budget(budget_gb) if target.device.type != "cpu" else None
    baseline = resident_bytes()
    multiple = (1,) * len(crop)  # what each crop side must stay a multiple of: the workload's

    def estimate(settings: RunSettings) -> MemoryEstimate:
        nonlocal multiple
        args = _with_checkpointing(model_args, settings.checkpointing)
        with torch.device("meta"):
            model, workload = plan.workload(model_path, args, replace(data, batch_size=settings.batch_size, crop_size=settings.crop_size))
        multiple = tuple(workload.crop_multiple) or multiple
        return estimate_training(
            model, workload, target.device, target.precision, data.loader, target.world_size,
            target.sharded, target.processes_per_host, baseline,
        )  # fmt: skip

    start = RunSettings(data.batch_size, data.crop_size, bool((model_args.get("backbone_kwargs") or {}).get("use_checkpoint")))
    try:
        first = estimate(start)
    except Exception as exc:  # noqa: BLE001 - an estimate that fails must never stop a run
        reason = (str(exc).splitlines() or [""])[0][:200]
        log.warning("could not estimate the peak memory (%s: %s); the run goes on unchecked", type(exc).__name__, reason)
        return None
    if first.fits(budget, host):
        log.info("estimated peak %s", _of(first, budget, host))
        return first
    found = fit_settings(start, first, estimate, budget, host, multiple, _can_checkpoint(model_args))
    if found is not None and auto_fit:
        settings, fitted = found
        apply_settings(config, settings)
        log.info("--auto-fit %s: estimated peak %s (was %.1f GiB)", " ".join(settings.changes(start)), _of(fitted, budget, host), first.total / GIB)
        return fitted
    raise MemoryBudgetError(refusal(first, budget, host, start, found, plan.smaller))


def fit_settings(start: RunSettings, first: MemoryEstimate, estimate: Callable[[RunSettings], MemoryEstimate], budget: Budget, host: Budget | None, multiple: tuple[int, ...], can_checkpoint: bool) -> tuple[RunSettings, MemoryEstimate] | None:
    """The first smaller settings (:func:`~medssl.memory.fit.shrink_steps`) whose estimate fits.

    Each candidate is predicted from the last traced estimate with the same checkpointing by
    scaling its step's activations with batch x crop voxels; the first predicted fit is then
    traced, and the search goes on from there if the trace disagrees."""
    traced = {start.checkpointing: (start, first)}
    verified = 0
    for settings in shrink_steps(start, multiple, can_checkpoint):
        if settings.checkpointing not in traced:  # the ratio checkpointing buys needs a trace
            traced[settings.checkpointing] = (settings, estimate(settings))
            verified += 1
        ref_settings, ref = traced[settings.checkpointing]
        if not _scaled(ref, settings.load / ref_settings.load).fits(budget, host):
            continue
        exact = ref if settings == ref_settings else estimate(settings)
        verified += settings != ref_settings
        if exact.fits(budget, host):
            return settings, exact
        traced[settings.checkpointing] = (settings, exact)
        if verified >= MAX_VERIFY:
            return None
    return None


def _scaled(estimate: MemoryEstimate, ratio: float) -> MemoryEstimate:
    """``estimate`` with the step's activations (the step less the gradients) and the batch
    scaled by ``ratio``."""
    terms = dict(estimate.terms)
    grads = terms.get("AdamW state", 0) // 2
    terms[STEP] = int(max(terms[STEP] - grads, 0) * ratio) + grads
    terms["batch"] = int(terms.get("batch", 0) * ratio)
    return replace(estimate, terms=terms)


def apply_settings(config: Namespace, settings: RunSettings) -> None:
    """Write fitted settings into the parsed ``config`` (before instantiation)."""
    config.data.init_args.batch_size = settings.batch_size
    config.data.init_args.crop_size = list(settings.crop_size)
    if settings.checkpointing:
        kwargs = dict(config.model.init_args.get("backbone_kwargs") or {})
        config.model.init_args.backbone_kwargs = {**kwargs, "use_checkpoint": True}


def refusal(first: MemoryEstimate, budget: Budget, host: Budget | None, start: RunSettings, found: tuple[RunSettings, MemoryEstimate] | None, hint: str) -> str:
    """The one line a refused run prints."""
    head = f"memory: estimated peak {_of(first, budget, host, over=True)}"
    if found is None:
        return f"{head}; no batch size, crop or checkpointing of this model fits: use a smaller backbone ({hint}) or more memory"
    settings, fitted = found
    return f"{head}; these fit (~{fitted.total / GIB:.1f} GiB): {' '.join(settings.changes(start))} (or add --auto-fit to apply them), or {hint}"


def _of(estimate: MemoryEstimate, budget: Budget, host: Budget | None, over: bool = False) -> str:
    """``"41.3 GiB on cpu > 21.9 GiB (MemAvailable) [step 38.2 + process 0.9 + ...]"``."""
    relation = "exceeds" if over else "of"
    text = f"{estimate.total / GIB:.1f} GiB on {estimate.device} {relation} {budget} [{estimate.breakdown()}]"
    if host is not None and estimate.host_terms:
        text += f"; host RAM {estimate.host_total / GIB:.1f} GiB of {host}"
    return text


def resolve_target(trainer: Namespace) -> Target | None:
    """The device, precision and rank layout of the trainer config; None when the check
    cannot run here (a GPU run on a machine without CUDA fails in Lightning by itself; a
    fork-based strategy must not see CUDA initialised)."""
    accelerator = str(trainer.get("accelerator") or "auto")
    strategy = str(trainer.get("strategy") or "auto").lower()
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu and (not torch.cuda.is_available() or "fork" in strategy or "notebook" in strategy):
        return None
    if accelerator not in ("cpu", "gpu", "cuda", "auto"):
        return None  # mps, tpu...: not estimated
    local = _device_count(trainer.get("devices"), torch.cuda.device_count() if gpu else os.cpu_count() or 1)
    nodes = int(trainer.get("num_nodes") or 1)
    precision = str(trainer.get("precision") or "32-true")
    if not gpu and (precision in ("bf16-mixed", "16-mixed", "16", "bf16")):
        precision = "32-true"  # the CLI falls back to 32-true on a CPU
    precision = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}.get(precision, precision)
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    return Target(device, precision, local * nodes, "fsdp" in strategy, local)


def _device_count(devices: Any, available: int) -> int:
    if devices in (None, "auto"):
        return 1
    if isinstance(devices, (list, tuple)):
        return max(len(devices), 1)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    count = int(text)
    return available if count == -1 else max(count, 1)


def _plain(value: Any) -> dict:
    if isinstance(value, Namespace):
        return value.as_dict()
    return dict(value or {})


def _with_checkpointing(model_args: dict, on: bool) -> dict:
    kwargs = dict(model_args.get("backbone_kwargs") or {})
    if on:
        kwargs["use_checkpoint"] = True
    return {**model_args, "backbone_kwargs": kwargs}


def _can_checkpoint(model_args: dict) -> bool:
    """Whether ``use_checkpoint`` can be switched on: the model builds its backbone by name
    (not from an artifact) and that backbone's factory takes it."""
    import inspect

    from medssl.backbones.registry import get_backbone_factory

    if model_args.get("encoder") or not model_args.get("backbone"):
        return False
    try:
        return "use_checkpoint" in inspect.signature(get_backbone_factory(model_args["backbone"])).parameters
    except ValueError:
        return False


def total_stride(backbone: nn.Module) -> int:
    """The coarsest feature map's stride: crops divisible by it keep every map whole."""
    strides = getattr(backbone, "feature_strides", None) or [1]
    return int(max(strides))
