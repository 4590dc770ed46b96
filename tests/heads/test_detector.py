"""RetinaNet on medssl encoders: losses, predictions, learning, and rebuilding from a JSON spec."""

from __future__ import annotations

import json

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.data.box_utils import box_iou

from medssl.backbones import create_backbone
from medssl.heads import BackboneFPN, build_head, build_retinanet, detector_from_spec, detector_spec

SIZE = 32
# name -> (tiny kwargs, returned levels): the FPN sees strides 4 and 8 (+ a pooled 16)
ENCODERS = {
    "resenc3d": (
        {"channels": (8, 16, 16, 16), "blocks_per_stage": (1, 1, 1, 1), "strides": (1, 2, 2, 2)},
        [2, 3],
    ),
    "swin3d": ({"window_size": 4, "depths": (1, 1, 1, 1)}, [1, 2]),
    "vit3d": ({"size": "s", "depth": 4, "img_size": SIZE, "patch_size": 8}, [1, 2]),
}


def tiny_detector(name: str = "resenc3d", seed: int = 0, **options: object) -> RetinaNetDetector:
    kwargs, levels = ENCODERS[name]
    torch.manual_seed(seed)
    encoder = create_backbone(name, **kwargs)
    return build_retinanet(encoder, 3, 1, levels, [[7, 7, 7]], out_channels=16, **options)


def cubes(count: int, gen: torch.Generator) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Noisy volumes ``[count, 1, 32^3]`` with 1-2 bright, separate cubes (side 5-8) each."""
    images, targets = 0.3 * torch.randn(count, 1, SIZE, SIZE, SIZE, generator=gen), []
    for image in images:
        boxes: list[torch.Tensor] = []
        wanted = int(torch.randint(1, 3, (1,), generator=gen))
        while len(boxes) < wanted:
            side = int(torch.randint(5, 9, (1,), generator=gen))
            low = torch.randint(1, SIZE - side - 1, (3,), generator=gen)
            box = torch.cat([low, low + side]).float()
            if any(((box[:3] < b[3:] + 2) & (b[:3] < box[3:] + 2)).all() for b in boxes):
                continue  # keep cubes apart
            boxes.append(box)
            x0, y0, z0, x1, y1, z1 = box.int().tolist()
            image[0, x0:x1, y0:y1, z0:z1] += 1.0
        targets.append(
            {"boxes": torch.stack(boxes), "labels": torch.zeros(wanted, dtype=torch.long)}
        )
    return images, targets


def sensitivity(detector: RetinaNetDetector, images: torch.Tensor, targets: list[dict]) -> float:
    """Share of true boxes overlapped (IoU >= 0.1) by a kept detection."""
    detector.eval()
    with torch.no_grad():
        found = detector(images)
    hits = total = 0
    for prediction, target in zip(found, targets):
        total += len(target["boxes"])
        if len(prediction["boxes"]):
            hits += int((box_iou(target["boxes"], prediction["boxes"]).amax(1) >= 0.1).sum())
    return hits / total


@pytest.mark.parametrize("name", ["resenc3d", "swin3d"])
def test_training_returns_finite_losses_that_reach_the_encoder(name: str) -> None:
    detector = tiny_detector(name)
    images, targets = cubes(2, torch.Generator().manual_seed(0))
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"classification", "box_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    encoder = detector.network.feature_extractor.encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_eval_returns_boxes_scores_labels_per_image() -> None:
    detector = tiny_detector(score_threshold=0.0, detections_per_image=5)
    detector.eval()
    with torch.no_grad():
        found = detector(torch.randn(2, 1, SIZE, SIZE, SIZE))
    assert len(found) == 2
    for prediction in found:
        assert set(prediction) == {"boxes", "labels", "labels_scores"}
        count = len(prediction["labels"])
        assert 0 < count <= 5
        assert prediction["boxes"].shape == (count, 6)
        assert prediction["labels_scores"].shape == (count,)
        assert (prediction["boxes"][:, 3:] >= prediction["boxes"][:, :3]).all()


def test_vit_maps_become_a_pyramid_with_a_pooled_level() -> None:
    kwargs, _ = ENCODERS["vit3d"]
    encoder = create_backbone("vit3d", **kwargs)  # four maps at stride 8
    fpn = BackboneFPN(encoder, [0, 1, 2, 3], out_channels=16)
    assert fpn.strides == [2, 4, 8, 16, 32] and fpn.size_divisible == 32
    with torch.no_grad():
        maps = fpn(torch.randn(1, 1, SIZE, SIZE, SIZE))
    assert [m.shape[1:] for m in maps.values()] == [(16, *[SIZE // s] * 3) for s in fpn.strides]


def test_spec_round_trip_rebuilds_the_same_detector() -> None:
    original = tiny_detector(nms_iou_threshold=0.3, score_threshold=0.0)
    spec = json.loads(json.dumps(detector_spec(original)))
    assert spec == detector_spec(original)
    kwargs, _ = ENCODERS["resenc3d"]
    torch.manual_seed(5)  # different initial weights: the state dict must bring them back
    rebuilt = build_head("detection", spec, create_backbone("resenc3d", **kwargs))
    rebuilt.load_state_dict(original.state_dict())
    images = torch.randn(2, 1, SIZE, SIZE, SIZE)
    original.eval()
    rebuilt.eval()
    with torch.no_grad():
        first, second = original(images), rebuilt(images)
    for a, b in zip(first, second):
        assert len(a["boxes"]) > 0
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_bad_specs_and_arguments_are_refused() -> None:
    spec = detector_spec(tiny_detector())
    kwargs, _ = ENCODERS["resenc3d"]
    encoder = create_backbone("resenc3d", **kwargs)
    with pytest.raises(ValueError, match="unknown key"):
        detector_from_spec(encoder, {**spec, "anchor_size": 3})
    with pytest.raises(ValueError, match="lacks required"):
        detector_from_spec(encoder, {k: v for k, v in spec.items() if k != "anchor_shapes"})
    with pytest.raises(ValueError, match="spatial_dims 2"):
        build_retinanet(encoder, 2, 1, [2], [[7, 7]])
    with pytest.raises(ValueError, match="anchor_shapes"):
        build_retinanet(encoder, 3, 1, [2], [[7, 7]])
    with pytest.raises(ValueError, match="out of range"):
        build_retinanet(encoder, 3, 1, [4], [[7, 7, 7]])
    with pytest.raises(ValueError, match="multiple of 8"):
        build_retinanet(encoder, 3, 1, [2], [[7, 7, 7]], out_channels=12)
    with pytest.raises(ValueError, match="matcher"):
        build_retinanet(encoder, 3, 1, [2], [[7, 7, 7]], matcher="hungarian")
    with pytest.raises(TypeError, match="not built by build_retinanet"):
        detector_spec(torch.nn.Linear(1, 1))


@pytest.mark.slow  # 20 steps: minutes on 2 busy CPU cores
def test_tiny_detector_learns_to_find_bright_cubes() -> None:
    detector = tiny_detector(score_threshold=0.2, detections_per_image=4)
    test_images, test_targets = cubes(8, torch.Generator().manual_seed(99))
    assert sensitivity(detector, test_images, test_targets) == 0.0  # prior: nothing above 0.2
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    detector.train()
    for _ in range(20):
        images, targets = cubes(4, gen)
        losses = detector(images, targets)
        optimizer.zero_grad()
        (losses["classification"] + losses["box_regression"]).backward()
        optimizer.step()
    assert sensitivity(detector, test_images, test_targets) >= 0.5
