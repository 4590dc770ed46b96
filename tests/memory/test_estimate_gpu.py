"""On a GPU: the estimate of a training step against ``torch.cuda.max_memory_allocated``.

The same terms as on the CPU, traced with fake CUDA tensors (bf16 autocast where asked);
``GPU_STEP_SLACK`` and ``GPU_FIXED`` are unverified guesses until this runs on a GPU, so the
comparison leaves the fixed term out (the CUDA context is not in ``max_memory_allocated``)
and allows +-35 %.
"""

from __future__ import annotations

import pytest
import torch

from medssl.backbones import create_backbone
from medssl.memory import EncoderPass, Workload, estimate_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize(
    ("name", "kwargs", "count", "size"),
    [
        ("swin3d", {"size": "b"}, 2, (96, 96, 96)),
        ("swin3d", {"size": "b", "use_checkpoint": True}, 2, (96, 96, 96)),
        ("resenc3d", {}, 2, (128, 128, 128)),
    ],
)
def test_the_gpu_estimate_is_within_35_percent_of_the_allocator_peak(name, kwargs, count, size, precision):
    device = torch.device("cuda", torch.cuda.current_device())
    with torch.device("meta"):
        meta = create_backbone(name, **kwargs)
    estimate = estimate_training(meta, Workload((EncoderPass(meta.forward_features, count, size),), 0), device, precision, baseline=0)
    predicted = estimate.total - estimate.terms["workspaces"]

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    model = create_backbone(name, **kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters())
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for _ in range(2):
        with amp:
            maps = model.forward_features(torch.randn(count, 1, *size, device=device))
        sum(m.float().mean() for m in maps).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated(device) - start
    assert abs(predicted - measured) <= 0.35 * measured, (predicted / 2**30, measured / 2**30)
