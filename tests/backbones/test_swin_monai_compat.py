"""MONAI SwinUNETR weights load into ``swin3d``/``swin2d`` and give MONAI's hidden states.

The state dicts come from MONAI's own ``SwinUNETR`` built inside the test, pass through
``tools/convert_monai_swin.py`` and load with ``strict=True``; the outputs of every stage
must equal ``SwinUNETR.swinViT(x)`` to 1e-5 (fp32, eval) for the SwinUNETR-B encoder, and to
1e-10 in float64 for the variants (v2 residual convolutions, odd sizes, 2D, sizes L and H).
"""

from __future__ import annotations

import json

import pytest
import torch

from medssl.backbones import create_backbone
from tools.convert_monai_swin import convert, convert_checked, main

monai_nets = pytest.importorskip("monai.networks.nets")
pytest.importorskip("einops")  # MONAI's swinViT forward needs it


def monai_swin(spatial_dims: int = 3, feature_size: int = 48, use_v2: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = monai_nets.SwinUNETR(
        in_channels=1,
        out_channels=2,
        feature_size=feature_size,
        spatial_dims=spatial_dims,
        use_v2=use_v2,
    )
    with torch.no_grad():  # position biases as large as trained ones, so a wrong index shows
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(std=0.3)
    return model.eval()


def assert_same_hidden_states(
    reference: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, atol: float = 1e-5
) -> None:
    with torch.no_grad():
        expected = reference(x)
        actual = ours.forward_features(x)
    assert len(actual) == len(expected) == 5
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"level {level}"
        torch.testing.assert_close(a, e, rtol=0, atol=atol, msg=f"hidden state {level}")


def assert_same_function_in_float64(
    reference: torch.nn.Module, ours: torch.nn.Module, shape
) -> None:
    """Float64 removes rounding noise (which the v2 instance norms amplify to ~2e-5 in fp32),
    so any difference left is a difference in the computation."""
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64)
    assert_same_hidden_states(reference.double(), ours.double(), x, atol=1e-10)


def test_monai_swinunetr_weights_load_strictly_and_match_at_64_cubed() -> None:
    swin_unetr = monai_swin()
    weights = convert({f"swinViT.{k}": v for k, v in swin_unetr.state_dict().items()})
    ours = create_backbone("swin3d", size="b").eval()
    ours.load_state_dict(weights, strict=True)
    torch.manual_seed(1)
    assert_same_hidden_states(swin_unetr.swinViT, ours, torch.randn(1, 1, 64, 64, 64))


@pytest.mark.parametrize(
    ("spatial_dims", "use_v2", "shape"),
    [
        (3, True, (1, 1, 48, 40, 32)),  # VoCo-style v2 residual convs, anisotropic, cut windows
        (3, False, (1, 1, 35, 30, 17)),  # odd sizes: padding in patch embedding, windows, merging
        (2, False, (2, 1, 100, 64)),
    ],
)
def test_monai_variants_match(spatial_dims: int, use_v2: bool, shape: tuple[int, ...]) -> None:
    swin_unetr = monai_swin(spatial_dims=spatial_dims, use_v2=use_v2)
    conversion = convert_checked(swin_unetr.state_dict())  # full SwinUNETR: decoder keys dropped
    assert conversion.missing == [] and conversion.unexpected == [] and conversion.dropped > 0
    kwargs = dict(conversion.backbone_kwargs)
    ours = create_backbone(kwargs.pop("name"), **kwargs).eval()
    ours.load_state_dict(conversion.state_dict, strict=True)
    assert_same_function_in_float64(swin_unetr.swinViT, ours, shape)


def test_converter_cli_reads_a_wrapped_checkpoint_and_writes_safetensors(tmp_path) -> None:
    from safetensors.torch import load_file, safe_open

    encoder = create_backbone(
        "swin3d", size="b", use_v2=True
    ).state_dict()  # MONAI's names, proven above
    wrapped = {
        "state_dict": {f"module.swinViT.{k}": v for k, v in encoder.items()}
        | {"module.decoder1.layer.conv1.conv.weight": torch.zeros(1)},
        "epoch": 7,
    }
    torch.save(wrapped, tmp_path / "voco.pt")
    assert main([str(tmp_path / "voco.pt"), str(tmp_path / "out")]) == 0
    written = tmp_path / "out" / "model.safetensors"
    with safe_open(str(written), "pt") as handle:
        recorded = json.loads(handle.metadata()["backbone"])
    assert recorded == {**recorded, "name": "swin3d", "size": "b", "use_v2": True}
    ours = create_backbone("swin3d", size="b", use_v2=True)
    ours.load_state_dict(load_file(str(written)), strict=True)
    # the same file read back as .safetensors converts to itself
    assert main([str(written), str(tmp_path / "again")]) == 0


def test_converter_refuses_what_is_not_a_swin(tmp_path, capsys) -> None:
    torch.save(
        {"state_dict": {"encoder1.layer.conv1.conv.weight": torch.zeros(1)}}, tmp_path / "unet.pt"
    )
    assert main([str(tmp_path / "unet.pt"), str(tmp_path / "out")]) == 1
    assert "not a SwinUNETR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("feature_size", "size"), [(96, "l"), (192, "h")])
def test_voco_large_and_huge_weights_match(feature_size: int, size: str) -> None:
    """The VoCo-L/H layout: SwinUNETR-V2 at feature size 96/192."""
    swin_unetr = monai_swin(feature_size=feature_size, use_v2=True)
    ours = create_backbone("swin3d", size=size, use_v2=True).eval()
    ours.load_state_dict(convert(swin_unetr.state_dict()), strict=True)
    assert_same_function_in_float64(swin_unetr.swinViT, ours, (1, 1, 64, 64, 64))
