"""``medssl predict`` vs MONAI ``sliding_window_inference`` on one CT-sized volume, same run.

One phantom CT volume (default ``256x256x128``; ``--full``: ``512x512x256``) saved as an
artifact-backed model input. The same network (an encoder from the registry + medssl's
``SegmentationDecoder``, rebuilt from a saved artifact by ``ArtifactPredictor``), window =
the plan's crop size (96^3), overlap 0.5, Gaussian blending, the same device; on CUDA both
run under bf16 autocast. Timed, interleaved, ``--repeats`` times each after one warm-up:

* medssl: ``ArtifactPredictor.segment`` (sliding window + argmax, the inference part of
  ``medssl predict``);
* MONAI: ``sliding_window_inference(mode="gaussian")`` around the same predictor + argmax.

Reports the best and median seconds, the ratio, and the mean Dice over foreground classes
between the two label maps (must be ~1.0), then one end-to-end ``predict`` on the volume
written as NIfTI (read, preprocess, infer, write NIfTI + PNG). Prints Markdown.

    python -m benchmarks.predict_vs_monai                         # CPU, 256x256x128
    python -m benchmarks.predict_vs_monai --device cuda --full --encoder swin3d
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from benchmarks.machine import describe
from medssl.backbones import create_backbone
from medssl.heads import build_head
from medssl.inference.artifact import save_artifact
from medssl.inference.predict import ArtifactPredictor
from medssl.inference.predictor import PredictionRequest
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.preprocess.stage import preprocess
from medssl.store.plan import IntensityNorm, Plan

ENCODERS = {
    "tiny": ("resenc3d", {"channels": [8, 16], "blocks_per_stage": [1, 1], "strides": [1, 2]}),
    "small": ("resenc3d", {"channels": [16, 32, 64], "blocks_per_stage": [1, 1, 1],
                           "strides": [1, 2, 2]}),
    "resenc3d": ("resenc3d", {}),
    "swin3d": ("swin3d", {"size": "b"}),
}
SPACING = (1.5, 1.5, 2.5)


def machine(device: torch.device) -> str:
    return describe(device)


def build_artifact(folder: Path, encoder_key: str, classes: int) -> Path:
    name, kwargs = ENCODERS[encoder_key]
    torch.manual_seed(0)
    encoder = create_backbone(name, **kwargs)
    spec = {"num_classes": classes, "decoder_channels": None, "deep_supervision": False}
    head = build_head("segmentation", spec, encoder)
    plan = Plan(target_spacing=SPACING, crop_size=(96, 96, 96), crop_size_2d=(256, 256),
                normalisation={"CT": IntensityNorm("clip_zscore", lower=-1000.0, upper=1500.0,
                                                   mean=-300.0, std=500.0)},
                cache_dtype="float32")
    import json

    return save_artifact(folder, backbone_name=name, backbone_kwargs=kwargs,
                         state_dict=encoder.state_dict(),
                         heads={"seg": {"spec": {"kind": "segmentation", **spec},
                                        "state_dict": head.state_dict()}},
                         plan=json.loads(plan.to_json()),
                         labels=["background"] + [f"class_{i}" for i in range(1, classes)])


def dice(a: np.ndarray, b: np.ndarray, classes: int) -> float:
    scores = []
    for c in range(1, classes):
        x, y = a == c, b == c
        total = int(x.sum()) + int(y.sum())
        if total:
            scores.append(2.0 * int((x & y).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--full", action="store_true", help="512x512x256 instead of 256x256x128")
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="small")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sw-batch-size", type=int, default=4)
    args = p.parse_args(argv)
    shape = (512, 512, 256) if args.full else (256, 256, 128)
    from tools.phantom import make_ct_phantom

    phantom = make_ct_phantom(shape, SPACING, seed=0)
    with tempfile.TemporaryDirectory(prefix="medssl-bench-") as tmp:
        tmp = Path(tmp)
        predictor = ArtifactPredictor(build_artifact(tmp / "artifact", args.encoder, args.classes),
                                      device=args.device, sw_batch_size=args.sw_batch_size)
        device = predictor.device
        array, _ = preprocess(phantom.image, SPACING, "CT", predictor.plan)
        image = torch.from_numpy(np.asarray(array, dtype=np.float32))[None, None]
        net = predictor.model.segmenter("seg")
        roi = list(predictor.plan.crop_size)

        def medssl_run() -> np.ndarray:
            return predictor.segment("seg", image, shape)

        def monai_run() -> np.ndarray:
            amp = (torch.autocast(device.type, dtype=predictor.autocast) if predictor.autocast
                   else torch.autocast(device.type, enabled=False))
            with torch.inference_mode(), amp:
                logits = sliding_window_inference(
                    image.to(device), roi, args.sw_batch_size, net, overlap=0.5,
                    mode="gaussian", device=device)
            return logits.float().argmax(dim=1)[0].cpu().numpy().astype(np.uint8)

        times: dict[str, list[float]] = {"medssl": [], "monai": []}
        outputs = {}
        for repeat in range(args.repeats + 1):
            for name, run in (("medssl", medssl_run), ("monai", monai_run)):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                outputs[name] = run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        agreement = dice(outputs["medssl"], outputs["monai"], args.classes)
        nifti = tmp / "volume.nii.gz"
        nifti.write_bytes(nifti_gz_bytes(Volume(phantom.image, phantom.affine)))
        out = tmp / "out"
        out.mkdir()
        prediction = predictor.predict(PredictionRequest(
            (nifti,), frozenset({"json", "nifti", "png"}), out))

    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    volume = "x".join(map(str, shape))
    print(f"machine: {machine(device)}")
    print(f"volume {volume}, encoder {args.encoder}, roi 96, overlap 0.5, gaussian, "
          f"sw batch {args.sw_batch_size}, {'bf16' if predictor.autocast else 'fp32'}, "
          f"{args.repeats} timed runs each\n")
    print("| implementation | best s | median s |")
    print("|---|---:|---:|")
    for name in ("monai", "medssl"):
        print(f"| {name} | {best[name]:.2f} | {median[name]:.2f} |")
    print(f"\nspeed-up (MONAI best / medssl best): {best['monai'] / best['medssl']:.2f}x; "
          f"Dice between the label maps: {agreement:.4f}")
    print(f"end-to-end predict (NIfTI in, NIfTI + PNG out): "
          f"{prediction.summary['timings_s']['total_s']:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in prediction.summary['timings_s'].items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
