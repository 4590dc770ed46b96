"""On a GPU: bf16 training steps of the full-size backbones are finite and track fp32."""

from __future__ import annotations

import pytest
import torch

from medssl.backbones import create_backbone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("swin3d", {"size": "b"}),
        ("swin3d", {"size": "b", "use_checkpoint": True}),
        ("vit3d", {"size": "b"}),
        ("resenc3d", {}),
    ],
)
def test_bf16_training_step_at_96_cubed(name: str, kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, **kwargs).cuda().train()
    x = torch.randn(2, 1, 96, 96, 96, device="cuda")
    with torch.no_grad():
        reference = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        maps = model.forward_features(x)
        pooled = model(x)
    loss = sum(m.float().square().mean() for m in maps) + pooled.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    similarity = torch.nn.functional.cosine_similarity(pooled.float(), reference, dim=1)
    assert (similarity > 0.98).all(), similarity
