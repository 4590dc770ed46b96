"""What loading an artifact refuses before it parses, builds or allocates anything.

- ``artifact.json`` larger than :data:`MAX_META_BYTES` or nested deeper than
  :data:`MAX_DEPTH` (``json`` would recurse until RecursionError);
- a record whose ``artifact_sha256`` is not :func:`artifact_digest` of the rest: it covers
  every field, ``weights_sha256`` included, so it is a digest of the whole artifact (an
  edited ``score_threshold`` is refused). It is a digest, not a signature: whoever may write
  the folder may reseal it (:func:`medssl.inference.artifact.reseal_artifact`), on purpose;
- head names that could act as paths (separators, ``..``) or as weight prefixes (dots);
- a model whose parameters, or a preprocessing crop whose one window, do not fit the memory
  budget (:mod:`medssl.memory`): the model is built first on the ``meta`` device, where a
  shape that differs from the weights fails the same way without allocating.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from medssl.memory import GIB, Budget
from medssl.memory.sliding import sliding_window_cost

__all__ = [
    "DIGEST_KEY",
    "MAX_DEPTH",
    "MAX_META_BYTES",
    "artifact_digest",
    "check_crop",
    "check_depth",
    "check_head_name",
    "check_model_bytes",
    "tensor_bytes",
]

DIGEST_KEY = "artifact_sha256"
MAX_META_BYTES = 16 << 20  # a real artifact.json is a few KB (guideline texts: a few hundred)
MAX_DEPTH = 32  # a real one nests 5 deep
_HEAD_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def artifact_digest(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``meta`` without its own ``artifact_sha256``."""
    record = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def check_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of JSON ``text`` (strings skipped); ValueError beyond ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise ValueError(f"nested deeper than {limit} levels")
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_head_name(name: Any, reserved: str) -> None:
    """A head name is a plain word: it names weight prefixes and output files."""
    if not isinstance(name, str) or not _HEAD_NAME.fullmatch(name) or name == reserved:
        shown = repr(name)[:40]
        raise ValueError(
            f"head name {shown}: use 1-64 letters, digits, '_' or '-' (no dots, path "
            f"separators or '..'), other than {reserved!r}"
        )


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def check_model_bytes(needed: int, budget: Budget, resident: int) -> None:
    """The model's parameters and buffers must fit what the budget leaves."""
    free = budget.total - resident
    if needed > free:
        raise ValueError(
            f"the model needs {needed / GIB:.2f} GiB for its parameters; {free / GIB:.2f} GiB of "
            f"the memory budget {budget} is left"
        )


def check_crop(crop: Sequence[int], num_classes: int, budget: Budget) -> None:
    """One window of the plan's crop (input, logits, output) must fit the budget."""
    if not crop or not all(isinstance(s, int) and s > 0 for s in crop):
        raise ValueError(f"plan crop_size {list(crop)}: expected positive integers")
    cost = sliding_window_cost(crop, crop, max(1, num_classes), forward_per_window=0).total(1)
    if cost > budget.total:
        side = "x".join(str(s) for s in crop)
        raise ValueError(
            f"plan crop_size {side} with {num_classes} classes needs {cost / GIB:.1f} GiB for "
            f"one window ({math.prod(crop):,} voxels); the memory budget is {budget}"
        )
