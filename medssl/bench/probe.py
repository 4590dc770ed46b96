"""Probe exported encoders side by side: kNN and linear-probe accuracy on one probe set.

The same measurement as the online probe of pretraining (:mod:`medssl.training.online_probe`:
weighted cosine kNN and a logistic-regression probe, fit on half of the probe set's volumes,
tested on the other half), applied after the fact to exported artifacts, so methods trained in
separate runs (a 3D encoder, a joint 2D/3D encoder served through its slice aggregator) are
compared on identical crops. ``scratch`` rows embed with the same architectures freshly
initialised (one row per distinct architecture, mean ± sd over ``scratch_seeds``): the floor
that pretraining must clear.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from medssl.atomic import atomic_write_bytes
from medssl.data.probe_set import ProbeSet
from medssl.errors import ConfigError
from medssl.inference.artifact import load_artifact
from medssl.inference.encoder import build_encoder
from medssl.training.online_probe import knn_accuracy, linear_probe_accuracy, split_by_group

log = logging.getLogger("medssl.bench")
FIELDS = ("init", "seed", "knn_acc", "linear_acc", "chance", "fit_crops", "test_crops")


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``[M, F]`` float32 pooled features of ``images [M, 1, *crop]`` (encoder in eval mode)."""
    encoder.eval()
    return torch.cat([encoder(x).float() for x in images.split(batch_size)])


def probe_scores(
    features: torch.Tensor, probe: ProbeSet, k: int = 20, linear_steps: int = 300
) -> dict[str, float]:
    """kNN / linear / chance accuracy of ``features`` (one row per probe crop)."""
    fit, test = split_by_group(probe.groups)
    labels = probe.labels
    args = (features[fit], labels[fit], features[test], labels[test])
    return {
        "knn_acc": knn_accuracy(*args, k=k),
        "linear_acc": linear_probe_accuracy(*args, steps=linear_steps),
        "chance": float((labels[test] == labels[fit].mode().values).float().mean()),
        "fit_crops": int(fit.sum()),
        "test_crops": int(test.sum()),
    }


def compare_encoders(
    probe_path: str | Path,
    encoders: Mapping[str, str | Path],
    scratch: bool = True,
    scratch_seeds: Sequence[int] = (0, 1, 2),
    k: int = 20,
    linear_steps: int = 300,
) -> list[dict]:
    """One row per encoder (and per scratch architecture and seed); see the module doc.

    An artifact with a slice aggregator (joint 2D/3D) embeds the 3D probe crops as volumes
    (``build_encoder(..., volume=True)``); any other artifact through its backbone.
    """
    probe = ProbeSet.load(probe_path)
    if not encoders and not scratch:
        raise ConfigError("probe comparison: name at least one --encoder or keep the scratch rows")
    rows: list[dict] = []
    architectures: dict[str, tuple] = {}
    for name, path in encoders.items():
        artifact = load_artifact(path)
        volume = artifact.aggregator is not None and probe.images.ndim == 5
        features = embed(build_encoder(artifact, volume=volume), probe.images)
        rows.append({"init": name, "seed": "", **probe_scores(features, probe, k, linear_steps)})
        key = json.dumps([artifact.backbone_name, artifact.backbone_kwargs, volume], sort_keys=True)
        architectures.setdefault(key, (artifact, volume, name))
        log.info("probe %s: %s", name, rows[-1])
    if scratch and not architectures:
        raise ConfigError("probe comparison: scratch rows take their architecture from an --encoder")
    for artifact, volume, name in architectures.values() if scratch else ():
        label = "scratch" if len(architectures) == 1 else f"scratch ({name} architecture)"
        for seed in scratch_seeds:
            torch.manual_seed(seed)
            encoder = build_encoder(artifact, volume=volume, weights=False)
            scores = probe_scores(embed(encoder, probe.images), probe, k, linear_steps)
            rows.append({"init": label, "seed": seed, **scores})
    return rows


def write_probe_report(rows: list[dict], out: str | Path) -> tuple[Path, Path]:
    """``probe.csv`` (every row) and ``probe.md`` (mean ± sd per init) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [",".join(FIELDS)] + [",".join(str(r[f]) for f in FIELDS) for r in rows]
    atomic_write_bytes(out / "probe.csv", ("\n".join(lines) + "\n").encode())
    table = probe_table(rows)
    atomic_write_bytes(out / "probe.md", (table + "\n").encode())
    return out / "probe.csv", out / "probe.md"


def probe_table(rows: list[dict]) -> str:
    """Markdown: one row per initialisation, kNN and linear accuracy (mean ± sd over seeds)."""
    by_init: dict[str, list[dict]] = {}
    for r in rows:
        by_init.setdefault(r["init"], []).append(r)
    out = ["| init | kNN accuracy | linear-probe accuracy | chance | test crops |", "|---|---|---|---|---|"]
    for init, group in by_init.items():
        cells = []
        for metric in ("knn_acc", "linear_acc"):
            values = [float(r[metric]) for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else None
            mean = statistics.fmean(values)
            cells.append(f"{mean:.3f}" + (f" ± {sd:.3f} (n={len(values)})" if sd is not None else ""))
        out.append(f"| {init} | {cells[0]} | {cells[1]} | {float(group[0]['chance']):.3f} | {group[0]['test_crops']} |")
    return "\n".join(out)

