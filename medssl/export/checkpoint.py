"""Read what an artifact needs from a pretraining checkpoint, without unpickling objects.

A checkpoint written by :class:`medssl.methods.SSLMethod` carries, besides Lightning's
``state_dict``, a ``"medssl"`` record: method, backbone name and kwargs, the prefix of the
backbone's weights in the state_dict, the store it trained on; a fine-tuning task adds its heads
(``{name: {"kind", "spec", "prefix"}}``, read as :class:`~medssl.types.HeadSpec` plus weights)
and joint 2D/3D pretraining its slice aggregator (the "heads" entry of kind
``slice_aggregator``). Checkpoints without the record fall back to the ``backbone`` /
``backbone_kwargs`` hyperparameters.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medssl.errors import MedsslError
from medssl.inference.artifact import AGGREGATOR
from medssl.types import HeadSpec

_NOT_WHOLE = (
    "not a whole checkpoint ({size:,} bytes, {what}); truncated by a kill or a full disk? "
    "Export an earlier checkpoint of the run"
)


class ExportError(MedsslError):
    """A checkpoint ``medssl export`` cannot turn into an artifact."""


@dataclass(frozen=True)
class CheckpointContents:
    """The encoder of a checkpoint: name, kwargs, weights; and where it came from."""

    method: str
    backbone_name: str
    backbone_kwargs: dict[str, Any]
    backbone_state: dict[str, torch.Tensor]
    store: str | None
    global_step: int
    task: str | None = None
    heads: dict[str, HeadSpec] | None = None  # fine-tuned models' task heads
    head_states: dict[str, dict[str, torch.Tensor]] | None = None  # each head's weights, by head name
    aggregator: dict[str, Any] | None = None  # a joint 2D/3D encoder's slice aggregator: constructor kwargs
    aggregator_state: dict[str, torch.Tensor] | None = None
    labels: list[str] | None = None
    label_values: list[int] | None = None  # the training masks' value of each label
    modalities: list[str] | None = None  # modalities of the volumes the task trained on
    extra: dict[str, Any] | None = None  # task extras (guideline texts) for the artifact's "extra"
    metrics: dict[str, float] | None = None  # the fine-tuning run's last validation ("step", "val/...")


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Load ``path`` with ``torch.load(weights_only=True)`` and pick out the backbone."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one lost its directory
        raise ExportError(f"checkpoint {path}: {_NOT_WHOLE.format(size=path.stat().st_size, what='no zip directory')}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ExportError(
            f"checkpoint {path}: not a readable weights-only checkpoint (it holds objects "
            "other than tensors and containers; was it written by medssl?)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a cut or garbled file fails in many ways inside torch
        what = type(exc).__name__
        raise ExportError(f"checkpoint {path}: {_NOT_WHOLE.format(size=path.stat().st_size, what=what)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ExportError(f"checkpoint {path}: no state_dict (is it a Lightning checkpoint?)")
    record = checkpoint.get("medssl")
    if not isinstance(record, dict):
        hparams = checkpoint.get("hyper_parameters") or {}
        if "backbone" not in hparams:
            raise ExportError(
                f"checkpoint {path}: neither a 'medssl' record nor backbone hyperparameters; was it written by medssl pretrain?"
            )
        record = {
            "method": str(hparams.get("_class_path", "unknown")).rsplit(".", 1)[-1],
            "backbone": hparams["backbone"],
            "backbone_kwargs": hparams.get("backbone_kwargs") or {},
            "backbone_prefix": "backbone.",
            "store": None,
        }
    prefix = record.get("backbone_prefix", "backbone.")
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    if not state:
        raise ExportError(f"checkpoint {path}: no tensor under '{prefix}' in its state_dict")
    heads, states, aggregator, aggregator_state = {}, {}, None, None
    for name, head in (record.get("heads") or {}).items():
        head_prefix = head.get("prefix", f"heads.{name}.")
        states[name] = {k[len(head_prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(head_prefix)}
        if not states[name]:
            raise ExportError(f"checkpoint {path}: head {name!r} has no tensor under '{head_prefix}'")
        kwargs = _plain(dict(head.get("spec") or {}))
        if head.get("kind") == AGGREGATOR:
            aggregator, aggregator_state = kwargs, states.pop(name)
            continue
        try:
            heads[name] = HeadSpec(head.get("kind"), kwargs)
        except ValueError as exc:
            raise ExportError(f"checkpoint {path}: head {name!r}: {exc}") from None
    return CheckpointContents(
        method=str(record.get("method", "unknown")),
        backbone_name=str(record["backbone"]),
        backbone_kwargs=_plain(dict(record.get("backbone_kwargs") or {})),
        backbone_state=state,
        store=record.get("store"),
        global_step=int(checkpoint.get("global_step", 0)),
        task=record.get("task"),
        heads=heads or None,
        head_states=states or None,
        aggregator=aggregator,
        aggregator_state=aggregator_state,
        labels=record.get("labels"),
        label_values=record.get("label_values"),
        modalities=record.get("modalities"),
        extra=record.get("extra") or None,
        metrics=dict(record.get("metrics") or {}) or None,
    )


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (JSON has no tuples; factories take either)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
