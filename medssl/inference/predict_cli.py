"""``medssl predict --model ARTIFACT --input PATH [PATH...] --out DIR``: one prediction, files out.

Writes into ``DIR`` (created; must hold no earlier prediction): ``prediction.json`` (the
pseudonymous summary: model, input geometry and modality, warnings, structures in mL by
label value and name, detections in RAS mm, diagnosis with evidence, timings) and, as asked with ``--outputs``, ``segmentation.nii.gz``,
``seg.dcm``, ``sr.dcm``, ``overlay.png``; ``segmentation.nii.gz`` has the input's own shape,
affine and axis order. Prints one summary line, any warnings, and where the files went.
Errors (bad input, unusable artifact) are raised as :class:`~medssl.errors.MedsslError`
for ``medssl``'s entry point to print in one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medssl.atomic import atomic_write_bytes
from medssl.errors import ConfigError
from medssl.inference.predictor import OUTPUT_KINDS, InputError, PredictionRequest

SUMMARY_FILE = "prediction.json"
DEFAULT_OUTPUTS = "json,nifti,seg,sr,png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medssl predict",
        description="Predict with an artifact on a DICOM series (folder, files or zip), a NIfTI "
        "or an NRRD: NIfTI + DICOM SEG/SR + JSON + PNG out.",
    )
    p.add_argument("--model", type=Path, required=True, help="the artifact folder")
    p.add_argument("--input", type=Path, nargs="+", required=True,
                   help="DICOM files or folder(s), one zip, or one NIfTI/NRRD file")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--outputs", default=DEFAULT_OUTPUTS,
                   help=f"comma-separated subset of {','.join(sorted(OUTPUT_KINDS))} "
                   f"(default {DEFAULT_OUTPUTS})")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    p.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--modality", type=str.upper, default=None,
                   help="modality of a NIfTI/NRRD input, e.g. CT or MR (they carry none; default "
                   "unknown: the model's only trained modality is assumed, with a warning)")
    p.add_argument("--strict-modality", action="store_true",
                   help="refuse an input whose modality is unknown or not one the model was "
                   "trained on (default: predict and warn)")
    p.add_argument("--allow-irregular", action="store_true",
                   help="resample DICOM stacks with gaps, uneven spacing or gantry tilt")
    return p


def _outputs(text: str) -> frozenset[str]:
    wanted = frozenset(v.strip().lower() for v in text.split(",") if v.strip())
    unknown = sorted(wanted - OUTPUT_KINDS)
    if unknown or not wanted:
        raise ConfigError(f"--outputs {text!r}: choose from {','.join(sorted(OUTPUT_KINDS))}")
    return wanted


def one_line(summary: dict[str, Any]) -> str:
    """A one-line account of a prediction summary."""
    parts = [f"{summary['model']['name']} ({summary['model']['task']})"]
    shape = "x".join(str(n) for n in summary["input"]["shape"])
    parts.append(f"{summary['input']['kind']} {shape}")
    for head in (summary.get("segmentation") or {}).values():
        found = [s for s in head["structures"] if s["voxels"]]
        parts.append(", ".join(f"{s['label']} {s['volume_ml']:.1f} mL" for s in found)
                     or "no structure")
    for head in (summary.get("detection") or {}).values():
        parts.append(f"{len(head)} detection(s)")
    for head in (summary.get("diagnosis") or {}).values():
        best = max(head["probabilities"].items(), key=lambda kv: kv[1])
        parts.append(f"{best[0]} p={best[1]:.2f}")
    parts.append(f"{summary['timings_s']['total_s']:.1f} s")
    return "; ".join(parts)


def predict_main(argv: list[str]) -> int:
    """``medssl predict ARGS``; returns 0, or raises a MedsslError naming the problem."""
    args = build_parser().parse_args(list(argv))
    outputs = _outputs(args.outputs)
    from medssl.inference.predict import ArtifactPredictor  # torch: only once the args are good

    try:
        predictor = ArtifactPredictor(
            args.model, device=args.device, overlap=args.overlap,
            sw_batch_size=args.sw_batch_size, modality=args.modality,
            allow_irregular=args.allow_irregular, strict_modality=args.strict_modality,
        )
    except (ValueError, InputError) as exc:
        raise ConfigError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / SUMMARY_FILE).exists():
        raise ConfigError(f"{out} already holds a prediction ({SUMMARY_FILE}); choose a new --out")
    prediction = predictor.predict(
        PredictionRequest(tuple(args.input), outputs=outputs, output_dir=out)
    )
    files = dict(prediction.files)
    if "json" in outputs:
        text = json.dumps(prediction.summary, indent=1, sort_keys=True, allow_nan=False)
        atomic_write_bytes(out / SUMMARY_FILE, (text + "\n").encode())
        files[SUMMARY_FILE] = out / SUMMARY_FILE
    print(one_line(prediction.summary))
    for warning in prediction.summary.get("warnings") or []:
        print(f"warning: {warning}")
    print(f"wrote {', '.join(sorted(files)) or 'nothing'} to {out}")
    return 0


__all__ = ["build_parser", "one_line", "predict_main"]
