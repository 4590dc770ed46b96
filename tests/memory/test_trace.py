"""Tracing on fake tensors (medssl.memory.trace): live bytes are counted as a real allocator
would hold them, nothing is allocated, and activation checkpointing shows."""

from __future__ import annotations

import resource

import torch
from torch import nn

from medssl.backbones import create_backbone
from medssl.memory.trace import fake_device, fake_module, module_bytes, trace_forward, trace_peak

MIB = 1 << 20


def test_live_bytes_follow_tensor_lifetimes():
    with fake_device("cpu"):
        def run():
            a = torch.empty(MIB // 4)  # 1 MiB
            b = a * 2  # 2 MiB live
            del a
            c = b + 1  # still 2 MiB: a was freed
            return c

        traced = trace_peak(run)
    assert traced.peak == 2 * MIB
    assert traced.end == 0  # the result was dropped inside trace_peak


def test_views_share_their_storage():
    with fake_device("cpu"):
        traced = trace_peak(lambda: [torch.empty(MIB // 4).view(-1, 4).t() for _ in range(1)])
    assert traced.peak == MIB


def test_a_huge_model_is_traced_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8192, 8192), nn.ReLU(), nn.Linear(8192, 8192))  # 1 GiB of weights
    params, trainable, _ = module_bytes(model)
    assert params == trainable > 512 * MIB
    with fake_device("cpu"):
        fake_module(model, "cpu")

        def step():
            model(torch.empty(4096, 8192)).mean().backward()

        traced = trace_peak(step)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert traced.end >= params  # the gradients outlive the step
    assert traced.peak > params + 2 * 4096 * 8192 * 4  # gradients + saved activations
    assert grown < 256 * MIB


def test_activation_checkpointing_saves_less():
    peaks = {}
    for checkpoint in (False, True):
        with torch.device("meta"):
            backbone = create_backbone("resenc3d", channels=[8, 16, 32, 64], blocks_per_stage=[2, 2, 2, 2], strides=[2, 2, 2, 2], use_checkpoint=checkpoint)
        with fake_device("cpu"):
            fake_module(backbone, "cpu")
            x = torch.empty(2, 1, 64, 64, 64)
            feats = []
            peaks[checkpoint] = trace_peak(lambda: feats.extend(backbone.forward_features(x)))  # noqa: B023
            feats.clear()
    assert peaks[True].end < 0.8 * peaks[False].end  # block inputs and returned maps stay


def test_a_forward_without_gradient_keeps_only_what_is_alive():
    kwargs = {"channels": [8, 16, 32, 64], "blocks_per_stage": [1, 1, 1, 1], "strides": [2, 2, 2, 2]}
    shape = (2, 1, 64, 64, 64)
    without = trace_forward(create_backbone("resenc3d", **kwargs).forward_features, shape, "cpu")  # real weights, read as fake
    with torch.device("meta"):
        backbone = create_backbone("resenc3d", **kwargs)
    with fake_device("cpu"):
        fake_module(backbone, "cpu")
        x = torch.empty(shape)
        saved = trace_peak(lambda: backbone(x).mean().backward())
    assert 2 * 8 * 64**3 * 4 <= without.peak < saved.peak / 2  # the stem's map, not every saved one
