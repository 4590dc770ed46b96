"""RetinaNet on a medssl encoder, from MONAI's detection components (2D or 3D).

RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection"): a feature pyramid
network (FPN) over the encoder's maps, a classification and a box-regression subnet shared by
every level, anchors at each position. MONAI's ``RetinaNetDetector`` supplies matching (ATSS,
Zhang et al. 2020, or an IoU matcher), hard-negative sampling, box coding and NMS; this module
wires our encoders into it and records the configuration as a JSON spec so an artifact can
rebuild the same detector (``detector_spec`` / ``detector_from_spec``).

Boxes are MONAI's ``StandardMode``: ``[x0, y0, z0, x1, y1, z1]`` in input voxels, along the
image axes in order (``[x0, y0, x1, y1]`` in 2D). Training: ``detector(images, targets)`` with
``targets[i] = {"boxes": [N_i, 2*dims] float, "labels": [N_i] int64}`` returns
``{"classification": loss, "box_regression": loss}``; eval: ``detector(images)`` returns per
image ``{"boxes": [M, 2*dims], "labels": [M], "labels_scores": [M]}``.

The detector's ``network`` holds the encoder, so its state dict carries the encoder weights too.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import Tensor, nn

from medssl.heads.pyramid import ScalePyramid, log2_exact, shares_one_stride, unetr_strides

Matcher = Literal["atss", "iou"]  # build_retinanet doc
MATCHERS = get_args(Matcher)


class BackboneFPN(nn.Module):
    """An encoder's maps at ``returned_levels``, through MONAI's ``FeaturePyramidNetwork``.

    ``encoder`` needs ``forward_features``, ``feature_channels``, ``feature_strides`` and
    ``spatial_dims`` (the medssl backbone surface). Maps sharing one stride (ViT, patch ``p``)
    are first resampled ViTDet/UNETR-style to ``[.., p/2, p, 2p]`` (``ScalePyramid``), and
    ``returned_levels`` index that pyramid. With ``extra_level`` a max-pooled level at twice the
    coarsest stride is appended (MONAI's ``LastLevelMaxPool``).

    ``forward(images [B, C, *S])`` -> ``OrderedDict`` name -> ``[B, out_channels, *S/strides[i]]``.
    Attributes: ``out_channels`` (what MONAI's ``RetinaNet`` reads), ``strides``,
    ``spatial_dims``, ``size_divisible`` (input sizes must be multiples of it).
    """

    def __init__(
        self,
        encoder: nn.Module,
        returned_levels: Sequence[int],
        out_channels: int = 64,
        extra_level: bool = True,
    ) -> None:
        super().__init__()
        channels = list(encoder.feature_channels)
        strides = [int(s) for s in encoder.feature_strides]
        spatial_dims = int(encoder.spatial_dims)
        if out_channels < 8 or out_channels % 8:
            # MONAI's RetinaNet heads use GroupNorm with 8 groups
            raise ValueError(f"out_channels must be a positive multiple of 8, got {out_channels}")
        levels = sorted({int(i) for i in returned_levels})
        if not levels or levels != [int(i) for i in returned_levels]:
            raise ValueError(
                f"returned_levels must be distinct and increasing, got {list(returned_levels)}"
            )
        if levels[0] < 0 or levels[-1] >= len(strides):
            raise ValueError(
                f"returned_levels {levels} out of range: the encoder has {len(strides)} maps "
                f"(strides {strides})"
            )
        self.encoder = encoder
        self.returned_levels = levels
        self.pyramid: ScalePyramid | None = None
        if shares_one_stride(strides):
            targets = unetr_strides(strides[0], len(strides), deepest=2 * strides[0])
            self.pyramid = ScalePyramid(
                spatial_dims, channels, strides, targets, [out_channels] * len(strides)
            )
            channels, strides = [out_channels] * len(strides), targets
        for s in strides:
            log2_exact(s, "every feature stride")
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.strides = [strides[i] for i in levels] + (
            [2 * strides[levels[-1]]] if extra_level else []
        )
        self.size_divisible = self.strides[-1]
        self.fpn = FeaturePyramidNetwork(
            spatial_dims,
            [channels[i] for i in levels],
            out_channels,
            extra_blocks=LastLevelMaxPool(spatial_dims) if extra_level else None,
        )

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.encoder.forward_features(images)
        if self.pyramid is not None:
            maps = self.pyramid(maps)
        return self.fpn(OrderedDict((f"level{i}", maps[i]) for i in self.returned_levels))


class AtssRetinaNetDetector(RetinaNetDetector):
    """MONAI's ``RetinaNetDetector`` whose ATSS matching also runs without torchvision.

    MONAI tests ``isinstance(matcher, torchvision...Matcher)`` before its ATSS branch, and that
    check raises when torchvision is absent (it is not a medssl dependency); ATSS is called
    directly here. Other matchers take MONAI's path unchanged.
    """

    def compute_anchor_matched_idxs(
        self,
        anchors: list[Tensor],
        targets: list[dict[str, Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[Tensor]:
        """Per image, the matched box index of every anchor ``[sum(HWDA)]`` (negative: none)."""
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            return super().compute_anchor_matched_idxs(anchors, targets, num_anchor_locs_per_level)
        matched = []
        for anchors_of_image, target in zip(anchors, targets):
            boxes = target[self.target_box_key].to(anchors_of_image.device)
            if boxes.numel() == 0:
                matched.append(torch.full_like(anchors_of_image[:, 0], -1, dtype=torch.int64))
                continue
            _, index = self.proposal_matcher(
                boxes, anchors_of_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched.append(index)
        return matched


def build_retinanet(
    encoder: nn.Module,
    spatial_dims: int,
    num_classes: int,
    returned_levels: Sequence[int],
    anchor_shapes: Sequence[Sequence[float]],
    out_channels: int = 64,
    extra_level: bool = True,
    matcher: Matcher = "atss",
    atss_candidates: int = 4,
    center_in_gt: bool = False,
    fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float = 0.4,
    samples_per_image: int = 64,
    positive_fraction: float = 0.3,
    min_negatives: int = 16,
    negative_pool_size: float = 20.0,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.22,
    detections_per_image: int = 100,
    candidates_per_level: int = 1000,
    sliding_window_roi: Sequence[int] | None = None,
    sliding_window_overlap: float = 0.25,
) -> RetinaNetDetector:
    """A MONAI ``RetinaNetDetector`` over ``BackboneFPN(encoder, returned_levels, out_channels)``.

    Args:
        encoder: a medssl backbone (its ``spatial_dims`` must equal ``spatial_dims``).
        num_classes: foreground classes (no background class: scores are per-class sigmoids).
        returned_levels: indices of the encoder maps (after the ViT pyramid) fed to the FPN.
        anchor_shapes: base anchor sizes in voxels at the finest returned level, one
            ``[w, h, d]`` per anchor; level ``i`` uses them times ``strides[i] / strides[0]``.
        matcher: "atss" (adaptive IoU threshold over ``atss_candidates`` nearest anchors per level)
            or "iou" (fixed ``fg_iou_threshold`` / ``bg_iou_threshold``; needs torchvision).
        samples_per_image, positive_fraction, min_negatives, negative_pool_size: the hard-negative
            sampler (anchors per image in the classification loss, their positive share, and how
            widely the hardest negatives are drawn from).
        score_threshold, nms_iou_threshold, detections_per_image, candidates_per_level: the box
            selector used in eval mode.
        sliding_window_roi: if given, a sliding-window inferer with this window is configured
            (used when calling ``detector(images, use_inferer=True)``); off by default.

    The returned detector has ``spec``: these arguments as JSON primitives (see ``detector_spec``).
    """
    spec = {
        name: _primitive(value)
        for name, value in locals().items()
        if name in inspect.signature(build_retinanet).parameters and name != "encoder"
    }
    if spatial_dims != getattr(encoder, "spatial_dims", None):
        raise ValueError(
            f"spatial_dims {spatial_dims} differs from the encoder's "
            f"{getattr(encoder, 'spatial_dims', None)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    if not anchor_shapes or any(len(shape) != spatial_dims for shape in anchor_shapes):
        raise ValueError(
            f"anchor_shapes must be a non-empty list of {spatial_dims}-value sizes, "
            f"got {anchor_shapes!r}"
        )
    if any(v <= 0 for shape in anchor_shapes for v in shape):
        raise ValueError(f"anchor sizes must be positive, got {anchor_shapes!r}")
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    if matcher == "iou" and importlib.util.find_spec("torchvision") is None:
        raise ValueError(
            "matcher 'iou' uses torchvision's Matcher, which is not installed; use matcher='atss'"
        )

    features = BackboneFPN(encoder, returned_levels, out_channels, extra_level)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[s / features.strides[0] for s in features.strides],
        base_anchor_shapes=[list(map(float, shape)) for shape in anchor_shapes],
    )
    network = RetinaNet(
        spatial_dims=spatial_dims,
        num_classes=num_classes,
        num_anchors=len(anchor_shapes),
        feature_extractor=features,
        size_divisible=features.size_divisible,
    )
    detector = AtssRetinaNetDetector(network, anchors)
    if matcher == "atss":
        detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=center_in_gt)
    else:
        detector.set_regular_matcher(fg_iou_threshold, bg_iou_threshold)
    detector.set_hard_negative_sampler(
        batch_size_per_image=samples_per_image,
        positive_fraction=positive_fraction,
        min_neg=min_negatives,
        pool_size=negative_pool_size,
    )
    detector.set_box_selector_parameters(
        score_thresh=score_threshold,
        topk_candidates_per_level=candidates_per_level,
        nms_thresh=nms_iou_threshold,
        detections_per_img=detections_per_image,
    )
    if sliding_window_roi is not None:
        detector.set_sliding_window_inferer(
            roi_size=list(sliding_window_roi), overlap=sliding_window_overlap
        )
    detector.spec = spec
    return detector


def _primitive(value: object) -> object:
    """Tuples (nested) to lists, so a spec equals its own JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    return value


def detector_spec(detector: RetinaNetDetector) -> dict[str, object]:
    """The JSON-ready arguments ``build_retinanet`` was called with (all but the encoder)."""
    spec = getattr(detector, "spec", None)
    if not isinstance(spec, dict):
        raise TypeError("this detector was not built by build_retinanet: it carries no spec")
    return copy.deepcopy(spec)


def detector_from_spec(encoder: nn.Module, spec: dict[str, object]) -> RetinaNetDetector:
    """Rebuild the detector ``spec`` describes on ``encoder`` (same architecture, fresh weights:
    load the saved state dict afterwards). ``ValueError`` on unknown or missing keys."""
    parameters = inspect.signature(build_retinanet).parameters
    unknown = sorted(set(spec) - set(parameters) - {"encoder"})
    if unknown or "encoder" in spec:
        raise ValueError(
            f"detector spec has unknown key(s) {unknown or ['encoder']}; "
            f"known: {', '.join(p for p in parameters if p != 'encoder')}"
        )
    required = [n for n, p in parameters.items() if p.default is p.empty and n != "encoder"]
    missing = [n for n in required if n not in spec]
    if missing:
        raise ValueError(f"detector spec lacks required key(s) {missing}")
    return build_retinanet(encoder, **spec)
