"""Small real artifacts and phantom inputs for the prediction tests (CPU, seconds).

Encoders are a two-stage ``resenc3d`` (8 and 16 channels); heads are the real medssl heads
with seeded random weights, saved with ``save_artifact`` exactly as ``medssl export`` does.
The segmentation head's last layer is set by hand so its classes follow the image
intensity (air / soft tissue / bone), which keeps every class present and the argmax far
from ties, whatever the random weights before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medssl.backbones import create_backbone
from medssl.heads import build_head
from medssl.heads.detector import build_retinanet, detector_spec
from medssl.heads.seg_decoder import SegmentationDecoder
from medssl.inference.artifact import save_artifact
from medssl.inference.predict import ArtifactPredictor
from medssl.store.plan import IntensityNorm, Plan
from medssl.types import HeadSpec, TaskKind

ENCODER_KWARGS = {"channels": [8, 16], "blocks_per_stage": [1, 1], "strides": [1, 2]}
SEG_LABELS = ["background", "soft_tissue", "bone"]
CANARY_NAME = "CANARY^PATIENT^NAME"
CANARY_ID = "CANARY-ID-4242"
CANARY_STUDY = "1.2.826.0.1.3680043.8.498.4242424242"
CANARY_SERIES = "1.2.826.0.1.3680043.8.498.4242424243"
GUIDELINES = {
    "task": "phantom_test",
    "description": "test guideline set",
    "classes": [
        {"name": "normal", "codes": [], "sentences": [
            {"text": "No focal lesion is seen.", "source": "test", "licence": "CC0"},
            {"text": "Organs are of normal size.", "source": "test", "licence": "CC0"}]},
        {"name": "lesion", "codes": [], "sentences": [
            {"text": "A focal hypodense lesion.", "source": "test", "licence": "CC0"},
            {"text": "A rounded mass with a rim.", "source": "test", "licence": "CC0"}]},
    ],
}


BRIGHT_HU = 1000  # ThresholdSegmenter's threshold: phantoms stay below 700 HU


class ThresholdSegmenter(ArtifactPredictor):
    """An artifact's reading, preprocessing and writing, with the network replaced by a
    threshold: voxels brighter than ``BRIGHT_HU`` (in the plan's CT normalisation) are class 2.
    Give it a plan whose target spacing is the input's, so its label map is exact."""

    def segment(self, name, image, shape):
        norm = self.plan.norm_for("CT")
        labels = (image[0, 0] > (BRIGHT_HU - norm.mean) / norm.std).to(torch.uint8) * 2
        assert tuple(labels.shape) == tuple(shape)  # the plan's spacing is the input's: no resampling
        return labels.numpy()


def small_plan(target_spacing=(6.0, 6.0, 8.0), crop_size=(32, 32, 16)) -> Plan:
    return Plan(
        target_spacing=tuple(target_spacing),
        crop_size=tuple(crop_size),
        crop_size_2d=(32, 32),
        normalisation={"CT": IntensityNorm("clip_zscore", lower=-1000.0, upper=1500.0,
                                           mean=-300.0, std=500.0)},
        cache_dtype="float32",
    )


def _encoder(seed: int):
    torch.manual_seed(seed)
    return create_backbone("resenc3d", **ENCODER_KWARGS).eval()


def segmentation_artifact(folder: Path, seed: int = 0, plan: Plan | None = None,
                          labels: list[str] | None = None, label_values: list[int] | None = None,
                          modalities: list[str] | None = None) -> Path:
    """Classes follow intensity: air / soft tissue / bone; a fourth and later class (``labels``
    longer than three) is never predicted. ``label_values``, ``modalities``: recorded as given."""
    labels = labels or SEG_LABELS
    encoder = _encoder(seed)
    spec = {"num_classes": len(labels), "decoder_channels": None, "deep_supervision": False}
    head = build_head("segmentation", spec, encoder)
    _intensity_classes(head)
    return save_artifact(
        folder, backbone_name="resenc3d", backbone_kwargs=ENCODER_KWARGS,
        state_dict=encoder.state_dict(),
        heads={"seg": (HeadSpec(TaskKind.SEGMENTATION, spec), head.state_dict())},
        plan=plan or small_plan(), labels=labels, label_values=label_values, modalities=modalities,
    )


def segmentation_artifact_2d(folder: Path, with_classifier: bool = False) -> Path:
    """A 2D (``resenc2d``) encoder and segmentation head, as joint 2D/3D pretraining then
    ``medssl finetune --data.spatial_dims 2`` exports; optionally a classification head too."""
    torch.manual_seed(0)
    encoder = create_backbone("resenc2d", **ENCODER_KWARGS).eval()
    spec = {"num_classes": 3, "decoder_channels": None, "deep_supervision": False}
    head = build_head("segmentation", spec, encoder)
    _intensity_classes(head)
    heads = {"seg": (HeadSpec(TaskKind.SEGMENTATION, spec), head.state_dict())}
    if with_classifier:
        dx = build_head("classification", {"num_classes": 2, "text_dim": 8, "embed_dim": 16, "num_heads": 2}, encoder)
        dx.set_guidelines(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))
        heads["dx"] = (HeadSpec(TaskKind.CLASSIFICATION, dx.spec()), dx.state_dict())
    return save_artifact(
        folder, backbone_name="resenc2d", backbone_kwargs=ENCODER_KWARGS,
        state_dict=encoder.state_dict(), heads=heads, plan=small_plan(), labels=SEG_LABELS,
    )


def _intensity_classes(head: SegmentationDecoder) -> None:
    """Make the 1x1 output conv read the raw image through the stride-1 stem: logits of
    background / soft tissue / bone grow with (-x, 0, +x) of a mean feature."""
    with torch.no_grad():
        conv = head.heads[0]
        conv.weight.zero_()
        mean = torch.ones(conv.weight.shape[1]) / conv.weight.shape[1]
        centre = (slice(None), *([0] * (conv.weight.ndim - 2)))  # 1x1(x1) kernel, 2D or 3D
        conv.weight[(0, *centre)] = -mean * 4
        conv.weight[(2, *centre)] = mean * 4
        bias = torch.full((conv.weight.shape[0],), -10.0)  # classes past the third never win
        bias[:3] = torch.tensor([0.0, 0.5, 0.0])
        conv.bias.copy_(bias)


def detection_artifact(folder: Path, seed: int = 0) -> Path:
    encoder = _encoder(seed)
    detector = build_retinanet(
        encoder, spatial_dims=3, num_classes=2, returned_levels=[0, 1],
        anchor_shapes=[[6, 6, 4]], out_channels=8, score_threshold=0.0,
        detections_per_image=5, candidates_per_level=50,
    )
    spec = HeadSpec(TaskKind.DETECTION, detector_spec(detector))
    return save_artifact(
        folder, backbone_name="resenc3d", backbone_kwargs=ENCODER_KWARGS,
        state_dict=encoder.state_dict(),
        heads={"det": (spec, detector.state_dict())},
        plan=small_plan(), labels=["background", "nodule", "cyst"],
    )


def classification_artifact(folder: Path, seed: int = 0, with_texts: bool = True) -> Path:
    encoder = _encoder(seed)
    head = build_head("classification", {"num_classes": 2, "text_dim": 8, "embed_dim": 16,
                                         "num_heads": 2}, encoder)
    generator = torch.Generator().manual_seed(seed)
    head.set_guidelines(torch.randn(4, 8, generator=generator), torch.tensor([0, 0, 1, 1]))
    return save_artifact(
        folder, backbone_name="resenc3d", backbone_kwargs=ENCODER_KWARGS,
        state_dict=encoder.state_dict(),
        heads={"dx": (HeadSpec(TaskKind.CLASSIFICATION, head.spec()), head.state_dict())},
        plan=small_plan(), labels=["normal", "lesion"],
        extra={"guidelines": GUIDELINES} if with_texts else None,
    )


def encoder_only_artifact(folder: Path) -> Path:
    encoder = _encoder(0)
    return save_artifact(folder, backbone_name="resenc3d", backbone_kwargs=ENCODER_KWARGS,
                         state_dict=encoder.state_dict(), plan=small_plan())


def phantom_series(folder: Path, *, series_number: int = 1, series_uid: str = CANARY_SERIES,
                   shape=(48, 48, 20), spacing=(4.0, 4.0, 6.0), seed: int = 0) -> list[Path]:
    """A CT phantom written as a DICOM series whose identifiers are canaries."""
    from tools.phantom import make_ct_phantom, write_ct_series

    phantom = make_ct_phantom(shape, spacing, seed=seed, n_lesions=2)
    return write_ct_series(
        phantom, folder, patient_name=CANARY_NAME, patient_id=CANARY_ID,
        study_uid=CANARY_STUDY, series_uid=series_uid, series_number=series_number,
    )


def write_lps_nifti(array: np.ndarray, affine_ras: np.ndarray, path: Path) -> Path:
    """Write a RAS+ volume as NIfTI whose voxel order is LPS (first two axes flipped)."""
    import nibabel as nib

    flipped = np.ascontiguousarray(array[::-1, ::-1, :])
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, array.shape[0] - 1
    flip[1, 1], flip[1, 3] = -1.0, array.shape[1] - 1
    image = nib.Nifti1Image(flipped, affine_ras @ flip)
    image.set_sform(affine_ras @ flip, code=1)
    image.set_qform(affine_ras @ flip, code=1)
    nib.save(image, str(path))
    return path
