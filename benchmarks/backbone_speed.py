"""Training-step throughput of medssl backbones against MONAI's SwinUNETR encoder, same run.

Measures, for one optimizer step (forward through every feature map, a scalar loss,
backward, AdamW): samples/s, achieved TFLOP/s (FLOPs of one step counted once with
``torch.utils.flop_counter.FlopCounterMode``) and model FLOP utilisation against the
device's dense peak. Rows: ``swin3d`` size B (medssl) and ``SwinUNETR(feature_size=48).swinViT``
(MONAI) at the same input, then ``vit3d`` size B.

    python benchmarks/backbone_speed.py                      # CUDA bf16 at 96^3 if present, else CPU fp32 at 64^3
    python benchmarks/backbone_speed.py --device cuda --batch 4 --compile
    python benchmarks/backbone_speed.py --device cpu --size 64 --batch 1 --steps 3

Prints a Markdown table (paste into benchmarks/RESULTS.md with the machine and command).
Not a test: nothing here is imported by medssl.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medssl.backbones import create_backbone

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
}


@dataclass
class Row:
    model: str
    implementation: str
    batch: int
    samples_per_s: float
    tflops_per_s: float
    mfu: float | None
    step_ms: float
    peak_mem_gib: float | None
    note: str = ""


def monai_swin_encoder(in_channels: int) -> nn.Module:
    """MONAI's SwinUNETR encoder with a ``forward_features`` twin, or an ImportError."""
    import einops  # noqa: F401  (MONAI's swinViT forward needs it)
    from monai.networks.nets import SwinUNETR

    encoder = SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=48).swinViT
    encoder.forward_features = encoder.forward  # type: ignore[method-assign]
    return encoder


def training_step(
    forward_features: Callable[[torch.Tensor], list[torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    dtype: torch.dtype,
) -> None:
    autocast = (
        torch.autocast(x.device.type, dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    with autocast:
        maps = forward_features(x)
        loss = sum(m.float().square().mean() for m in maps)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> int:
    """FLOPs of one forward + backward (the optimizer's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    autocast = (
        torch.autocast(x.device.type, dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    with counter, autocast:
        maps = model.forward_features(x)
        sum(m.float().square().mean() for m in maps).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str,
    implementation: str,
    build: Callable[[], nn.Module],
    args: argparse.Namespace,
    size: int,
    batch: int,
    peak: float | None,
) -> Row:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and not args.fp32 else torch.float32
    torch.manual_seed(0)
    model = build().to(device).train()
    x = torch.randn(batch, 1, size, size, size, device=device)
    flops = step_flops(model, x, dtype)
    forward_features = (
        torch.compile(model.forward_features) if args.compile else model.forward_features
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    for _ in range(args.warmup):
        training_step(forward_features, optimizer, x, dtype)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = []  # the median resists other load on a shared machine
    for _ in range(args.steps):
        start = time.perf_counter()
        training_step(forward_features, optimizer, x, dtype)
        synchronize(device)
        step_seconds.append(time.perf_counter() - start)
    seconds = statistics.median(step_seconds)
    achieved = flops / seconds / 1e12
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, forward_features, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Row(
        name,
        implementation,
        batch,
        batch / seconds,
        achieved,
        achieved / peak if peak else None,
        1e3 * seconds,
        memory,
    )


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda" or args.fp32:
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def markdown(rows: list[Row], args: argparse.Namespace, size: int) -> str:
    device = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    dtype = "bf16 autocast" if args.device == "cuda" and not args.fp32 else "fp32"
    lines = [
        (
            f"Device: {device}; torch {torch.__version__}; input {size}^3 x 1 channel; {dtype}; "
            f"compile={args.compile}; median of {args.steps} timed steps after {args.warmup} warm-up"
        ),
        "",
        "| model | implementation | batch | samples/s | TFLOP/s | MFU | step ms | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        mem = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "n/a"
        lines.append(
            f"| {r.model} | {r.implementation}{r.note} | {r.batch} | {r.samples_per_s:.2f} | "
            f"{r.tflops_per_s:.3f} | {mfu} | {r.step_ms:.0f} | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="Swin batch (default 4 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--vit-batch", type=int, default=None, help="ViT batch (default 32 on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="cube edge (default 96 on CUDA, 64 on CPU)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--skip-monai", action="store_true")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    size = args.size or (96 if cuda else 64)
    batch = args.batch or (4 if cuda else 1)
    vit_batch = args.vit_batch or (32 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(args)
    rows = [
        measure(
            "swin3d-B",
            "medssl",
            lambda: create_backbone("swin3d", size="b"),
            args,
            size,
            batch,
            peak,
        )
    ]
    if not args.skip_monai:
        try:
            rows.append(
                measure(
                    "swin3d-B",
                    "MONAI SwinUNETR.swinViT",
                    lambda: monai_swin_encoder(1),
                    args,
                    size,
                    batch,
                    peak,
                )
            )
            rows[-2].note = f" ({rows[-2].samples_per_s / rows[-1].samples_per_s:.2f}x MONAI)"
        except ImportError as error:
            print(f"MONAI row skipped: {error}")
    rows.append(
        measure(
            "vit3d-B",
            "medssl",
            lambda: create_backbone("vit3d", size="b", img_size=size),
            args,
            size,
            vit_batch,
            peak,
        )
    )
    print(markdown(rows, args, size))


if __name__ == "__main__":
    main()
