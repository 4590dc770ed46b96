"""A 3D convolution that avoids a oneDNN fault: CPU bf16 weight gradients of thin maps.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``precision="bf16-mixed"`` on a CPU),
oneDNN's bf16 Conv3d backward returns NaN weight gradients at random, 1 run in 15-30, when the
input's depth is 2 (measured with torch 2.13 on AMD EPYC with avx512_bf16: a 3x3x3 conv over
``[16, 16, 2, 2, 2]`` failed 27 of 400 draws, over ``[16, 16, 4, 4, 4]`` none, and none with
oneDNN off). The deepest stage of a CNN on a small crop has exactly such maps (a 16x16x8 crop
through strides 1, 2, 2, or 64x64x32 through five stride-2 stages), so a CPU bf16 run stopped
at step 0 with a non-finite gradient. :class:`Conv3d` runs those maps in float32 instead: they
are the smallest of the network, so the cost is nothing to speak of, and the parameters and
state-dict keys are :class:`torch.nn.Conv3d`'s. GPUs, float32 and 2D are untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Maps with any spatial size at or below this run in float32 under CPU bf16 autocast.
THIN = 2


def cpu_bf16_thin(x: Tensor) -> bool:
    """True when ``x`` would meet the fault: a CPU tensor under bf16 autocast with a thin axis."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and min(x.shape[2:]) <= THIN
    )


class Conv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d`, in float32 where CPU bf16 gives NaN gradients (module doc)."""

    def forward(self, x: Tensor) -> Tensor:
        if cpu_bf16_thin(x):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)
