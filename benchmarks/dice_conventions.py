"""Mean Dice of finished segmentation runs under both conventions for a structure absent from a case.

The project scores a structure that a validation case lacks but the model paints in a few
voxels as Dice 0 (nnU-Net's convention, :mod:`medssl.metrics.segmentation`); MONAI's
``DiceMetric`` leaves such a case out by default (``ignore_empty=True``). On the real chest-CT
slabs two of the three validation slabs hold no heart and one no liver, spleen or kidney, so the
two conventions differ most there. This script re-validates each run's final weights (its
``last.ckpt``, built from its own ``config.yaml``) on its validation cases and reports both::

    python -m benchmarks.dice_conventions benchmarks/out/real/label-efficiency/runs/segmentation \\
        --out benchmarks/out/real/label-efficiency/dice_conventions.csv

Columns: run, strict (absent-but-painted counts 0; the harness's figure), present (cases whose
truth holds the structure only), and the structures the two differ on.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import torch

from medssl.tasks.cli import build_cli
from medssl.types import BatchKey


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def conventions(run: Path) -> dict[str, float | str]:
    """Re-validate ``run``'s last weights; mean Dice over structures under both conventions."""
    cli = build_cli(["-c", str(run / "config.yaml"), "--trainer.default_root_dir", "/tmp/medssl-dice-conventions"])
    model, data = cli.model, cli.datamodule
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    data.setup("validate")
    model.hparams.roi_size = model.hparams.roi_size or list(data.crop_size)  # what a trainer's data module gives
    names = model.label_names()
    strict: dict[int, list[float]] = {}
    present: dict[int, list[float]] = {}
    with torch.no_grad():
        for batch in data.val_dataloader():
            model._val = []
            model.validation_step(batch, 0)
            case = model._val[0]
            truth = set(np.unique(batch[BatchKey.LABEL][0].numpy()).tolist())
            for label, metrics in case.items():
                if label == 0:
                    continue
                strict.setdefault(label, []).append(metrics["dice"])
                present.setdefault(label, []).append(metrics["dice"] if label in truth else math.nan)
    per_strict = {names[k]: _mean(v) for k, v in strict.items()}
    per_present = {names[k]: _mean(v) for k, v in present.items()}
    differ = [n for n in per_strict if not math.isclose(per_strict[n], per_present[n], abs_tol=1e-9)]
    return {"run": run.name, "strict": _mean(list(per_strict.values())), "present": _mean(list(per_present.values())),
            "differ_on": ";".join(f"{n} {per_strict[n]:.2f}->{per_present[n]:.2f}" for n in differ)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a folder of run folders (each with config.yaml and checkpoints/last.ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args(argv)
    rows = [conventions(run) for run in sorted(p for p in args.runs.iterdir() if (p / "checkpoints" / "last.ckpt").is_file())]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "strict", "present", "differ_on"])
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['run']:40s} strict {row['strict']:.3f}  present {row['present']:.3f}  {row['differ_on']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
