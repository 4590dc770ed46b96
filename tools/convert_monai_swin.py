"""Convert a MONAI SwinUNETR (or VoCo) checkpoint into ``model.safetensors`` for ``swin3d``.

Accepts a state dict or ``{"state_dict": ...}`` / ``{"model": ...}`` in a ``.pt`` / ``.pth``
file (read with ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors) or a
``.safetensors`` file. Keys lose their ``module.`` / ``swinViT.`` / ``swin_vit.`` /
``backbone.`` prefixes; only encoder keys are kept (the SwinUNETR decoder, VoCo heads and
optimizer state are dropped), and the result is checked against a freshly built ``swin3d``
(feature size read from the weights, ``use_v2`` from the presence of ``layers1c``), so the
report lists what is missing or unexpected before anything is written.

    python tools/convert_monai_swin.py CHECKPOINT.pt OUT_DIR

writes ``OUT_DIR/model.safetensors`` and prints the backbone kwargs to put in an artifact.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from medssl.backbones import create_backbone
from medssl.backbones.swin import SWIN_FEATURE_SIZES

_PREFIXES = ("module.", "swinViT.", "swin_vit.", "backbone.", "encoder.", "model.")
_ENCODER_ROOTS = ("patch_embed.", "layers1", "layers2", "layers3", "layers4")


@dataclass
class Conversion:
    """Result of ``convert_checked``: the encoder weights and how they fit ``swin3d``."""

    state_dict: dict[str, Tensor]
    backbone_kwargs: dict[str, object]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: int = 0


def convert(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Encoder weights of a MONAI SwinUNETR / VoCo state dict, keys as ``swin3d`` expects.

    Strips the wrapper prefixes listed in ``_PREFIXES`` (repeatedly, in any order) and keeps
    keys under ``patch_embed`` and ``layers1..4`` (``layersNc`` included).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            continue
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        if name.startswith(_ENCODER_ROOTS):
            out[name] = value.detach().contiguous()
    return out


def infer_swin_kwargs(weights: dict[str, Tensor]) -> dict[str, object]:
    """``spatial_dims`` and the ``swin3d``/``swin2d`` kwargs (size, in_channels, depths,
    num_heads, window_size, use_v2) that converted weights were made with."""
    if "patch_embed.proj.weight" not in weights:
        raise ValueError(
            "no 'patch_embed.proj.weight' after conversion: not a SwinUNETR/VoCo Swin checkpoint"
        )
    proj = weights["patch_embed.proj.weight"]
    by_width = {v: k for k, v in SWIN_FEATURE_SIZES.items()}
    if proj.shape[0] not in by_width:
        raise ValueError(
            f"feature size {proj.shape[0]} is none of swin3d's sizes {SWIN_FEATURE_SIZES}"
        )
    spatial_dims = proj.ndim - 2
    depths, num_heads = [], []
    for stage in range(1, 5):
        table = weights.get(f"layers{stage}.0.blocks.0.attn.relative_position_bias_table")
        if table is None:
            raise ValueError(
                f"stage {stage} has no attention weights: not a SwinUNETR/VoCo Swin checkpoint"
            )
        num_heads.append(table.shape[1])
        depths.append(
            len({k.split(".")[3] for k in weights if k.startswith(f"layers{stage}.0.blocks.")})
        )
    # the bias table has (2w - 1) ** spatial_dims rows for a cubic window w
    rows = weights["layers1.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(rows ** (1 / spatial_dims)) + 1) // 2
    return {
        "spatial_dims": spatial_dims,
        "size": by_width[proj.shape[0]],
        "in_channels": proj.shape[1],
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window,
        "use_v2": any(k.startswith("layers1c.") for k in weights),
    }


def convert_checked(state_dict: dict[str, Tensor]) -> Conversion:
    """``convert`` plus a strict comparison against the ``swin3d``/``swin2d`` it fits."""
    weights = convert(state_dict)
    kwargs = infer_swin_kwargs(weights)
    spatial_dims = kwargs.pop("spatial_dims")
    name = "swin3d" if spatial_dims == 3 else "swin2d"
    model = create_backbone(name, **kwargs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    unexpected += sorted(
        k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape
    )
    return Conversion(
        weights, {"name": name, **kwargs}, missing, unexpected, len(state_dict) - len(weights)
    )


def load_checkpoint(path: Path) -> dict[str, Tensor]:
    """State dict from ``.safetensors`` or a ``.pt``/``.pth`` (``weights_only``), unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise TypeError(f"holds a {type(obj).__name__}, not a state dict")
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", type=Path, help="MONAI SwinUNETR / VoCo .pt, .pth or .safetensors"
    )
    parser.add_argument("out_dir", type=Path, help="folder for model.safetensors")
    args = parser.parse_args(argv)
    try:
        result = convert_checked(load_checkpoint(args.checkpoint))
    except (OSError, ValueError, TypeError, RuntimeError, pickle.UnpicklingError) as error:
        print(f"{args.checkpoint}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"kept {len(result.state_dict)} encoder tensors, dropped {result.dropped} other entries")
    print(f"backbone: {result.backbone_kwargs}")
    for label, keys in (("missing", result.missing), ("unexpected", result.unexpected)):
        if keys:
            print(
                f"{label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
            )
    if result.missing or result.unexpected:
        print(
            f"{args.checkpoint}: does not fit {result.backbone_kwargs['name']}; nothing written",
            file=sys.stderr,
        )
        return 1
    from safetensors.torch import save_file

    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = args.out_dir / "model.safetensors"
    partial = target.with_suffix(".safetensors.partial")
    save_file(
        result.state_dict, str(partial), metadata={"backbone": json.dumps(result.backbone_kwargs)}
    )
    partial.replace(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
