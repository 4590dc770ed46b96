"""Whole-volume sliding-window prediction: medssl vs MONAI's sliding_window_inference, same run.

Input: a CT-sized random volume ``1x1x256x256x128`` (``--full``: ``512x512x256``), windows
of 96^3 at overlap 0.5, gaussian blending, 4 windows per predictor call. Predictor: a small
3D conv net (``--predictor conv``) or medssl's ``resenc3d`` first (full-resolution) feature map
and a 1x1 head (``--predictor resenc``). Both implementations run under
``torch.inference_mode`` on the same device, interleaved, ``--repeats`` times each after one
warm-up; the best and the median are reported, with the largest difference between outputs.

    python -m benchmarks.sliding_window                    # CPU
    python -m benchmarks.sliding_window --device cuda --full --autocast

Prints a Markdown row (paste it into benchmarks/RESULTS.md). Not imported by medssl.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from benchmarks.machine import describe
from medssl.backbones import create_backbone
from medssl.inference.sliding_window import sliding_window


def machine(device: torch.device) -> str:
    return describe(device)


class ResEncHead(nn.Module):
    """First (full-resolution) feature map of a small resenc3d, then a 1x1 conv to classes."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.encoder = create_backbone(
            "resenc3d", channels=(16, 32), blocks_per_stage=(1, 1), strides=(1, 2)
        )
        self.head = nn.Conv3d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x)[0])


def predictor(kind: str, classes: int) -> nn.Module:
    if kind == "resenc":
        return ResEncHead(classes)
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv3d(8, classes, 1)
    )


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="512x512x256 instead of 256x256x128")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--predictor", choices=("conv", "resenc"), default="conv")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast (both sides)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (1, 1, 512, 512, 256) if args.full else (1, 1, 256, 256, 128)
    image = torch.randn(shape, device=device)
    net = predictor(args.predictor, args.classes).to(device).eval()
    amp = torch.bfloat16 if args.autocast else None

    def monai_run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bool(amp)):
            return sliding_window_inference(
                image, (args.roi,) * 3, args.batch_size, net, overlap=args.overlap,
                mode="gaussian", sigma_scale=0.125,
            )

    def medssl_run() -> torch.Tensor:
        return sliding_window(
            net, image, args.roi, overlap=args.overlap, batch_size=args.batch_size,
            blend="gaussian", sigma_scale=0.125, autocast=amp,
        )

    times: dict[str, list[float]] = {"monai": [], "medssl": []}
    outputs: dict[str, torch.Tensor] = {}
    for name, fn in (("monai", monai_run), ("medssl", medssl_run)):
        timed(fn, device)  # warm-up: allocator, kernels, importance map
    for _ in range(args.repeats):
        for name, fn in (("monai", monai_run), ("medssl", medssl_run)):
            seconds, outputs[name] = timed(fn, device)
            times[name].append(seconds)
    diff = (outputs["monai"].float() - outputs["medssl"].float()).abs().max().item()

    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    command = "python -m benchmarks.sliding_window " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv)
    size = "x".join(map(str, shape[2:]))
    print(f"machine: {machine(device)}; load {os.getloadavg()[0]:.1f}")
    print("| machine | command | volume | predictor | MONAI s (best/median) "
          "| medssl s (best/median) | MONAI / medssl (best) | max abs diff |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    print(
        f"| {machine(device)} | `{command.strip()}` | {size} | {args.predictor} "
        f"| {best['monai']:.2f} / {median['monai']:.2f} "
        f"| {best['medssl']:.2f} / {median['medssl']:.2f} "
        f"| {best['monai'] / best['medssl']:.2f}x | {diff:.1e} |"
    )


if __name__ == "__main__":
    main()
