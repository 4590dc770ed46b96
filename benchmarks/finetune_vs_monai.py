"""Segmentation fine-tuning speed: medssl's swin3d + decoder vs MONAI's SwinUNETR, same data and device.

    python -m benchmarks.finetune_vs_monai [--device cuda] [--roi 96] [--volume 256 256 128] [--steps 5]

Both models: Swin-B features (48), the same crop batch, Dice + CE, AdamW; a training step
(forward, backward, optimiser) timed after warm-up, then validation of one whole volume by
sliding window (roi, overlap 0.5, Gaussian) — medssl's :func:`sliding_window` around our model,
MONAI's ``sliding_window_inference`` around SwinUNETR. Prints a Markdown row for RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR

from benchmarks.machine import describe
from medssl.inference.sliding_window import sliding_window
from medssl.losses.segmentation import dice_ce_loss
from medssl.tasks.segmentation import Segmentation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_time(step, device: torch.device, steps: int) -> float:
    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--volume", type=int, nargs=3, default=[256, 256, 128])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    roi = [args.roi] * 3
    x = torch.randn(args.batch, 1, *roi, device=device)
    y = torch.randint(0, args.classes, (args.batch, *roi), device=device)
    volume = torch.randn(1, 1, *args.volume, device=device)

    ours = Segmentation(num_classes=args.classes, backbone="swin3d", backbone_kwargs={"size": "b"}, deep_supervision=False).to(device)
    monai = SwinUNETR(in_channels=1, out_channels=args.classes, feature_size=48).to(device)
    monai_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    opt_ours = torch.optim.AdamW(ours.parameters(), 1e-4)
    opt_monai = torch.optim.AdamW(monai.parameters(), 1e-4)

    def step_ours() -> None:
        opt_ours.zero_grad(set_to_none=True)
        dice_ce_loss(ours(x), y).backward()
        opt_ours.step()

    def step_monai() -> None:
        opt_monai.zero_grad(set_to_none=True)
        monai_loss(monai(x), y[:, None]).backward()
        opt_monai.step()

    t_ours, t_monai = _train_time(step_ours, device, args.steps), _train_time(step_monai, device, args.steps)
    ours.eval()
    monai.eval()
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        sliding_window(ours._predict_logits, volume, roi, overlap=0.5, batch_size=args.batch)
        _sync(device)
        v_ours = time.perf_counter() - start
        start = time.perf_counter()
        sliding_window_inference(volume, roi, args.batch, monai, overlap=0.5, mode="gaussian")
        _sync(device)
        v_monai = time.perf_counter() - start
    print(f"| {describe(device)} | roi {args.roi}³, batch {args.batch} | train step: MONAI {t_monai:.2f} s, medssl {t_ours:.2f} s ({t_monai / t_ours:.2f}x) "
          f"| validation {'x'.join(map(str, args.volume))}: MONAI {v_monai:.1f} s, medssl {v_ours:.1f} s ({v_monai / v_ours:.2f}x) |")


if __name__ == "__main__":
    main()
