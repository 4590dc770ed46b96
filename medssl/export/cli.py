"""``medssl export CHECKPOINT --out ARTIFACT``: pretraining or fine-tuning checkpoint -> artifact.

Rebuilds the checkpoint's backbone (``create_backbone`` + strict weight loading, so a
checkpoint that does not match its own record is refused), attaches the store's plan when
``plan.json`` is found (``--store``, else the store the checkpoint recorded), writes
``model.safetensors`` + ``artifact.json`` and prints one summary line. A fine-tuning
checkpoint's heads go in too: each head's :class:`~medssl.types.HeadSpec` (its ``kind`` plus
constructor arguments) into the JSON, its weights under ``heads.<name>.``; its label names into ``labels``, their
mask values into ``label_values`` and the modalities it trained on into ``modalities``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from medssl.backbones import create_backbone
from medssl.export.checkpoint import ExportError, read_checkpoint
from medssl.inference.artifact import load_artifact, save_artifact, weights_digest
from medssl.store.plan import PLAN_FILE, Plan

log = logging.getLogger("medssl.export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medssl export",
        description="Turn a pretraining checkpoint into an artifact (model.safetensors + artifact.json).",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint written by medssl pretrain (RUN/checkpoints/*.ckpt)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the artifact folder (created; existing files are replaced atomically)",
    )
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="take plan.json from this store (default: the store the checkpoint trained on)",
    )
    p.add_argument(
        "--no-plan", action="store_true", help="export without a plan even when one is found"
    )
    return p


def find_plan(store: str | Path | None) -> Plan | None:
    """The store's plan, or None when there is no ``plan.json``."""
    if store is None or not (Path(store) / PLAN_FILE).is_file():
        return None
    return Plan.load(store)


def export_checkpoint(
    checkpoint: Path, out: Path, store: Path | None = None, with_plan: bool = True
) -> Path:
    """Write the artifact of ``checkpoint`` to ``out``; returns ``out``."""
    contents = read_checkpoint(checkpoint)
    try:
        encoder = create_backbone(contents.backbone_name, **contents.backbone_kwargs)
        encoder.load_state_dict(contents.backbone_state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(
            f"checkpoint {checkpoint}: its weights do not rebuild backbone {contents.backbone_name!r}: {str(exc)[:300]}"
        ) from None
    plan_store = store if store is not None else contents.store
    plan = find_plan(plan_store) if with_plan else None
    if with_plan and plan is None:
        log.warning(
            "no %s found (store %s): the artifact carries no plan; pass --store STORE to add one",
            PLAN_FILE,
            plan_store,
        )
    heads = {name: (spec, contents.head_states[name]) for name, spec in (contents.heads or {}).items()}
    aggregator = None if contents.aggregator is None else (contents.aggregator, contents.aggregator_state)
    source = {
        "method": contents.method,
        "task": contents.task,
        "global_step": contents.global_step,
        "checkpoint_sha256": weights_digest(checkpoint),
    }
    return save_artifact(
        out,
        backbone_name=contents.backbone_name,
        backbone_kwargs=contents.backbone_kwargs,
        state_dict=encoder.state_dict(),
        heads=heads or None,
        aggregator=aggregator,
        labels=contents.labels,
        label_values=contents.label_values,
        modalities=contents.modalities,
        plan=plan,
        metrics=contents.metrics,
        extra={**(contents.extra or {}), "source": source},
    )


def export_main(argv: list[str]) -> int:
    """``medssl export ARGS``; returns 0. Raises ExportError / ArtifactError (MedsslError) on refusal."""
    args = build_parser().parse_args(list(argv))
    out = export_checkpoint(args.checkpoint, args.out, args.store, with_plan=not args.no_plan)
    artifact = load_artifact(out)  # read back: the digest and the format check pass
    n = sum(t.numel() for t in artifact.tensors.values())
    print(
        f"exported {artifact.meta['extra']['source']['method']} step {artifact.meta['extra']['source']['global_step']}: "
        f"{artifact.backbone_name} ({n / 1e6:.2f} M parameters), plan {'included' if artifact.plan is not None else 'absent'} -> {out}"
    )
    return 0
