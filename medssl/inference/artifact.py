"""The model artifact: ``model.safetensors`` + ``artifact.json`` (DESIGN.md section 3).

``artifact.json`` (format :data:`ARTIFACT_FORMAT`) holds what is needed to rebuild and feed
the model: backbone name and kwargs, head specs (``"heads"``: ``{name: {"kind": ..., **kwargs}}``,
read as :class:`~medssl.types.HeadSpec`), the preprocessing plan (read as
:class:`~medssl.store.plan.Plan`), label names,
``label_values`` (the training masks' value of each label, parallel to ``labels``; absent in
older artifacts: the class index is the value), ``modalities`` (those it was trained on;
absent: the plan's), metrics, ``weights_sha256`` of ``model.safetensors``, ``created_at``
and the medssl version.
``model.safetensors`` holds the encoder's tensors under ``backbone.<name>`` and each head's
under ``heads.<head>.<name>``. A joint 2D/3D encoder stores its slice aggregator as the entry
``slice_aggregator`` of "heads" (kind ``"slice_aggregator"``, weights under
``heads.slice_aggregator.``): it is not a task head, so :attr:`Artifact.heads` leaves it out
and :attr:`Artifact.aggregator` / :attr:`Artifact.aggregator_state` give it. Head specs and the
plan are parsed once, on first use; a record that does not parse is an :class:`ArtifactError`.

Loading reads the weights file once into memory, checks its sha256 against the JSON before
parsing anything, and parses it with safetensors only: loading never unpickles.
``artifact_sha256`` is a digest of the whole record (``weights_sha256`` included, so of the
weights too): an edited field is refused; :func:`reseal_artifact` is the deliberate way to
change one. Size, nesting depth and head names are checked before anything is built
(:mod:`medssl.inference.artifact_guard`). Both files
are written atomically (temporary sibling, fsync, rename), weights first: a write cut short
leaves either the old artifact or a digest mismatch that loading refuses.

Imports torch, safetensors, json and hashlib (plus the standard library, medssl's atomic
writer, error and value types and the store's plan): the server uses this module without
methods or lightning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from medssl import __version__
from medssl.atomic import atomic_write_bytes
from medssl.errors import MedsslError
from medssl.inference.artifact_guard import (
    DIGEST_KEY,
    MAX_META_BYTES,
    artifact_digest,
    check_depth,
    check_head_name,
)
from medssl.store.plan import Plan
from medssl.types import HeadSpec, OutputClass

ARTIFACT_FORMAT = 1
MAX_LABEL_VALUE = 65535  # label maps are uint8 or uint16
WEIGHTS_FILE = "model.safetensors"
META_FILE = "artifact.json"
BACKBONE_PREFIX = "backbone."
HEADS_PREFIX = "heads."
AGGREGATOR = "slice_aggregator"  # the heads entry (and kind) of a joint 2D/3D slice aggregator


class ArtifactError(MedsslError):
    """An artifact that cannot be written or that loading refuses (names the file and the reason)."""


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: its JSON record and its tensors (on the CPU)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def backbone_name(self) -> str:
        return self.meta["backbone"]["name"]

    @property
    def backbone_kwargs(self) -> dict[str, Any]:
        return dict(self.meta["backbone"]["kwargs"])

    @property
    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The encoder's state_dict (keys as ``backbone.state_dict()`` has them)."""
        return _strip(self.tensors, BACKBONE_PREFIX)

    def head_state(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.heads:
            raise KeyError(f"artifact {self.path}: no head {name!r}; heads: {sorted(self.heads)}")
        return _strip(self.tensors, f"{HEADS_PREFIX}{name}.")

    @cached_property
    def heads(self) -> dict[str, HeadSpec]:
        """Task heads by name (the slice aggregator is not one: :attr:`aggregator`)."""
        heads = {}
        for name, record in (self.meta.get("heads") or {}).items():
            if isinstance(record, dict) and record.get("kind") == AGGREGATOR:
                continue
            try:
                heads[name] = HeadSpec.from_json(record)
            except (TypeError, ValueError) as exc:
                raise ArtifactError(f"artifact {self.path}: head {name!r}: {exc}") from None
        return heads

    @property
    def aggregator(self) -> dict[str, Any] | None:
        """The slice aggregator's spec (without ``kind``), or None when the artifact has none."""
        record = (self.meta.get("heads") or {}).get(AGGREGATOR)
        if not isinstance(record, dict) or record.get("kind") != AGGREGATOR:
            return None
        return {k: v for k, v in record.items() if k != "kind"}

    @property
    def aggregator_state(self) -> dict[str, torch.Tensor]:
        if self.aggregator is None:
            raise KeyError(f"artifact {self.path}: no {AGGREGATOR}")
        return _strip(self.tensors, f"{HEADS_PREFIX}{AGGREGATOR}.")

    @cached_property
    def plan(self) -> Plan | None:
        """The preprocessing plan, or None when the artifact was exported without one."""
        record = self.meta.get("plan")
        if record is None:
            return None
        try:
            return Plan.from_dict(record)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {self.path}: plan unusable ({exc})") from None

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    @property
    def label_values(self) -> list[int] | None:
        """The training masks' value of each entry of :attr:`labels`, or None (older artifacts)."""
        values = self.meta.get("label_values")
        return None if values is None else [int(v) for v in values]

    @property
    def output_classes(self) -> tuple[OutputClass, ...]:
        """``labels`` with their values (identity when the artifact records none)."""
        names = self.labels or []
        values = self.label_values or list(range(len(names)))
        return tuple(OutputClass(i, v, str(n)) for i, (v, n) in enumerate(zip(values, names)))

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the model was trained on: ``modalities``, else the plan's normalisation keys."""
        recorded = self.meta.get("modalities")
        if recorded is None:
            recorded = sorted(self.plan.normalisation) if self.plan is not None else []
        return tuple(str(m).upper() for m in recorded)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"artifact {name} must be plain JSON (str, numbers, lists, dicts): {exc}"
        ) from None


def save_artifact(
    out_dir: str | Path,
    *,
    backbone_name: str,
    backbone_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    heads: Mapping[str, tuple[HeadSpec, Mapping[str, torch.Tensor]]] | None = None,
    aggregator: tuple[Mapping[str, Any], Mapping[str, torch.Tensor]] | None = None,
    plan: Plan | None = None,
    labels: list[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    label_values: list[int] | None = None,
    modalities: list[str] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/artifact.json``; returns ``out_dir``.

    Args:
        state_dict: the encoder's state_dict.
        heads: ``{head name: (spec, state_dict)}``; the specs go into the JSON, the weights
            under ``heads.<name>.``.
        aggregator: a joint 2D/3D encoder's slice aggregator, ``(constructor kwargs, state_dict)``
            (the "heads" entry :data:`AGGREGATOR`).
        plan: the preprocessing plan.
        labels, metrics, extra: JSON values recorded as given (``extra`` under "extra").
        label_values: the training masks' value of each label (parallel to ``labels``).
        modalities: modalities the model was trained on (DICOM codes; ``OT`` for none).
    """
    out = Path(out_dir)
    check_label_values(label_values, labels, "artifact")
    tensors = {BACKBONE_PREFIX + k: v for k, v in state_dict.items()}
    specs: dict[str, Any] = {}
    for name, (spec, weights) in (heads or {}).items():
        try:
            check_head_name(name, AGGREGATOR)
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None
        specs[name] = spec.to_json()
        tensors.update({f"{HEADS_PREFIX}{name}.{k}": v for k, v in weights.items()})
    if aggregator is not None:
        spec, weights = aggregator
        specs[AGGREGATOR] = {**spec, "kind": AGGREGATOR}
        tensors.update({f"{HEADS_PREFIX}{AGGREGATOR}.{k}": v for k, v in weights.items()})
    # contiguous CPU copies: safetensors refuses views that share storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    bad = [
        k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ArtifactError(f"refusing to export non-finite weights ({', '.join(bad[:3])})")
    data = save_safetensors(tensors, metadata={"format": "pt"})
    meta = {
        "format": ARTIFACT_FORMAT,
        "backbone": {"name": backbone_name, "kwargs": dict(backbone_kwargs)},
        "heads": specs,
        "plan": None if plan is None else plan.to_dict(),
        "labels": None if labels is None else list(labels),
        "label_values": None if label_values is None else [int(v) for v in label_values],
        "modalities": None if modalities is None else sorted({str(m).upper() for m in modalities}),
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "medssl_version": __version__,
    }
    for key in ("backbone", "heads", "plan", "labels", "label_values", "modalities", "metrics", "extra"):
        _check_json(key, meta[key])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, data)
    _write_meta(out, meta)
    return out


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    meta = {**meta, DIGEST_KEY: artifact_digest(meta)}
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(folder / META_FILE, text.encode())


def reseal_artifact(path: str | Path, meta: dict[str, Any]) -> Path:
    """Replace the artifact's record by ``meta`` with a new ``artifact_sha256``: a deliberate
    edit (the weights and their ``weights_sha256`` stay as they are). Returns the folder."""
    folder = Path(path)
    if folder.name == META_FILE:
        folder = folder.parent
    _write_meta(folder, meta)
    return folder


def load_artifact(path: str | Path) -> Artifact:
    """Read, verify and parse an artifact folder (or its ``artifact.json``); never unpickles.

    Raises:
        ArtifactError: missing files, unknown format version, a weights file whose sha256 is
            not the recorded one, or a weights file that is not safetensors.
    """
    folder = Path(path)
    if folder.name == META_FILE:
        folder = folder.parent
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ArtifactError(
            f"artifact {folder}: expected {META_FILE} and {WEIGHTS_FILE} in the folder"
        )
    size = meta_path.stat().st_size
    if size > MAX_META_BYTES:
        raise ArtifactError(f"artifact {folder}: {META_FILE} is {size:,} bytes; at most {MAX_META_BYTES:,}")
    try:
        text = meta_path.read_text()
        check_depth(text)
        meta = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"artifact {folder}: {META_FILE} is not usable JSON ({str(exc)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(
            f"artifact {folder}: format {found!r}; this medssl reads format {ARTIFACT_FORMAT} only"
        )
    for key in ("backbone", "weights_sha256"):
        if key not in meta:
            raise ArtifactError(f"artifact {folder}: {META_FILE} lacks '{key}'")
    check_label_values(meta.get("label_values"), meta.get("labels"), f"artifact {folder}")
    data = weights_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["weights_sha256"]:
        raise ArtifactError(
            f"artifact {folder}: {WEIGHTS_FILE} sha256 {digest[:12]}… differs from the recorded {str(meta['weights_sha256'])[:12]}…; refusing to load"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ArtifactError(
            f"artifact {folder}: {WEIGHTS_FILE} is not a safetensors file ({exc})"
        ) from None
    heads = meta.get("heads") or {}
    if not isinstance(heads, dict):
        raise ArtifactError(f"artifact {folder}: 'heads' must be an object")
    for name in heads:
        try:
            check_head_name(name, "" if heads[name].get("kind") == AGGREGATOR else AGGREGATOR)
        except (ValueError, AttributeError) as exc:
            raise ArtifactError(f"artifact {folder}: {exc}") from None
    known = tuple([BACKBONE_PREFIX] + [f"{HEADS_PREFIX}{h}." for h in heads])
    stray = [k for k in tensors if not k.startswith(known)]
    if stray:
        raise ArtifactError(
            f"artifact {folder}: unexpected tensors {stray[:3]} (neither backbone nor a listed head)"
        )
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        raise ArtifactError(f"artifact {folder}: {META_FILE} has no {DIGEST_KEY} (written by an older medssl?); export it again")
    if recorded != artifact_digest(meta):
        raise ArtifactError(
            f"artifact {folder}: {META_FILE} was changed after export ({DIGEST_KEY} does not match "
            "its contents); refusing to load. Export again, or reseal a deliberate edit "
            "(medssl.inference.artifact.reseal_artifact)"
        )
    return Artifact(folder, meta, tensors)


def check_label_values(values: Any, labels: Any, where: str) -> None:
    """``values`` (or None) must give each of ``labels`` its own integer value in 0..65535."""
    if values is None:
        return
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ArtifactError(f"{where}: label_values must be a list of integers")
    if not isinstance(labels, list) or len(labels) != len(values):
        count = len(labels) if isinstance(labels, list) else 0
        raise ArtifactError(f"{where}: {len(values)} label_values for {count} labels; one value per label")
    if len(set(values)) != len(values) or not all(0 <= v <= MAX_LABEL_VALUE for v in values):
        raise ArtifactError(f"{where}: label_values {values[:8]} must be distinct and in 0..{MAX_LABEL_VALUE}")


def weights_digest(path: str | Path) -> str:
    """sha256 of a file, streamed (for recording checkpoints and other large inputs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "AGGREGATOR",
    "ARTIFACT_FORMAT",
    "Artifact",
    "ArtifactError",
    "check_label_values",
    "load_artifact",
    "reseal_artifact",
    "save_artifact",
    "weights_digest",
]
