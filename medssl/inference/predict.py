"""``ArtifactPredictor``: an artifact behind the :class:`~medssl.inference.predictor.Predictor` protocol.

One prediction: read the upload with the ingest readers (``inputs.read_input``), preprocess
it with the artifact's plan (``preprocess.preprocess``: the same function that built the
training cache), run every head, bring results back to the input's world geometry, write
the outputs asked for. Per head kind:

* segmentation: ``sliding_window`` (window = the plan's crop size, Gaussian blending, bf16
  autocast on CUDA, fp32 on CPU), argmax, label map resampled onto the input grid (nearest;
  the preprocessed grid spans the input's field of view) -> ``segmentation.nii.gz`` (RAS,
  the input's affine, deterministic bytes) and, for DICOM input, ``seg.dcm`` on the source
  images; per-structure volumes in mL in the summary.
* detection: the detector on the whole preprocessed volume (fp32); boxes mapped to world
  RAS mm -> summary, and ``sr.dcm`` (TID 1500) for DICOM input with any detection.
* classification: class probabilities, the top guideline sentences of the predicted class
  as evidence (texts where the artifact carries them, else indices) and where each of those
  sentences attended (world RAS mm of the attention peak).

The summary is built from model outputs and geometry only (docs/identifiers.md): no header
field, no UID, no file name. Model compute holds a lock, so concurrent ``predict`` calls
share one model safely while their reading and writing overlap.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medssl.atomic import atomic_write_bytes
from medssl.inference.artifact import ArtifactError, load_artifact
from medssl.inference.inputs import Grid, InputVolume, read_input
from medssl.inference.model import InferenceModel
from medssl.inference.overlay import write_overlay
from medssl.inference.predictor import OUTPUT_KINDS, Prediction, PredictionRequest
from medssl.inference.preprocess import preprocess
from medssl.inference.sliding_window import sliding_window, sliding_window_by_slice
from medssl.io.seg_writer import write_dicom_seg
from medssl.io.sr_writer import write_dicom_sr
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.store.plan import CROP_DIVISOR, Plan


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested, but no CUDA GPU is available")
    return device


class ArtifactPredictor:
    """Predicts with the artifact in ``artifact_dir`` (see the module docstring).

    Args:
        artifact_dir: folder with ``artifact.json`` + ``model.safetensors``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        overlap: sliding-window overlap in ``[0, 1)``.
        sw_batch_size: windows per forward pass.
        modality: modality assumed for NIfTI/NRRD inputs (they carry none); default: the
            plan's only modality when it has exactly one, else per-volume z-score.
        allow_irregular: resample irregular DICOM stacks instead of refusing them.
    """

    def __init__(
        self,
        artifact_dir: str | Path,
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        modality: str | None = None,
        allow_irregular: bool = False,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.artifact = load_artifact(artifact_dir)
        if not self.artifact.plan:
            raise ArtifactError(
                f"artifact {self.artifact.path}: no preprocessing plan; export it with --store"
            )
        try:
            self.plan = Plan.from_json(json.dumps(self.artifact.plan))
        except ValueError as exc:
            raise ArtifactError(f"artifact {self.artifact.path}: plan unusable ({exc})") from None
        self.device = resolve_device(device)
        self.model = InferenceModel.from_artifact(self.artifact, self.device)
        flat = self.model.encoder.spatial_dims == 2
        if flat and set(self.model.kinds.values()) - {"segmentation"}:
            raise ArtifactError(
                f"artifact {self.artifact.path}: a 2D encoder predicts volumes slice by slice for segmentation only; its heads are {sorted(set(self.model.kinds.values()))}"
            )
        # the window of the training crops: 2D encoders segment volumes slice by slice
        self.window = tuple(self.plan.crop_size_2d if flat else self.plan.crop_size)
        self.overlap, self.sw_batch_size = float(overlap), int(sw_batch_size)
        self.allow_irregular = allow_irregular
        modalities = sorted(self.plan.normalisation)
        self.default_modality = modality or (modalities[0] if len(modalities) == 1 else None)
        self.autocast = torch.bfloat16 if self.device.type == "cuda" else None
        self._lock = threading.Lock()
        self.name = self.artifact.path.name or "model"
        self.version = str(self.artifact.meta.get("weights_sha256", ""))[:12] or "unknown"
        self.info = self._info()

    def _info(self) -> dict[str, Any]:
        kinds = self.model.kinds
        return {
            "name": self.name,
            "task": "+".join(sorted(set(kinds.values()))),
            "heads": dict(sorted(kinds.items())),
            "labels": self.artifact.labels,
            "backbone": self.artifact.backbone_name,
            "artifact_sha256": self.artifact.meta.get("weights_sha256"),
            "medssl_version": self.artifact.meta.get("medssl_version"),
            "plan": {
                "target_spacing_mm": list(self.plan.target_spacing),
                "window": list(self.window),
                "modalities": sorted(self.plan.normalisation),
            },
            "device": str(self.device),
            "outputs": sorted(OUTPUT_KINDS),
        }

    # ---------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """One window of zeros through every head (allocator, kernels, autocast caches)."""
        x = torch.zeros((1, self.model.encoder.in_channels, *self.window), device=self.device)
        with self._lock, torch.inference_mode():
            for name, kind in sorted(self.model.kinds.items()):
                if kind == "segmentation":
                    sliding_window(self.model.segmenter(name), x, self.window,
                                   self.overlap, 1, autocast=self.autocast)
                elif kind == "detection":
                    self.model.detect(name, x)
                else:
                    self.model.classify(name, x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict(self, request: PredictionRequest) -> Prediction:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        inp = read_input(request.inputs, allow_irregular=self.allow_irregular)
        timings["read_s"] = time.perf_counter() - start
        out_dir = request.output_dir or Path(tempfile.mkdtemp(prefix="medssl-predict-"))
        modality = inp.modality or self.default_modality
        tick = time.perf_counter()
        array, reached = preprocess(inp.volume.array, inp.volume.spacing, modality, self.plan)
        image = torch.from_numpy(np.asarray(array, dtype=np.float32))[None, None]
        timings["preprocess_s"] = time.perf_counter() - tick
        grid = Grid(inp.volume.affine, tuple(inp.volume.array.shape), tuple(image.shape[2:]))
        summary: dict[str, Any] = {
            "model": {k: self.info[k] for k in ("name", "task", "backbone", "artifact_sha256")},
            "input": _input_summary(inp, modality, reached),
            "notes": [],
        }
        files: dict[str, Path] = {}
        label_maps: dict[str, np.ndarray] = {}
        detections: list[dict[str, Any]] = []
        for name, kind in sorted(self.model.kinds.items()):
            tick = time.perf_counter()
            if kind == "segmentation":
                label_maps[name] = self.segment(name, image, grid.input_shape)
                summary.setdefault("segmentation", {})[name] = _structures(
                    label_maps[name], inp.volume.affine, self.model.class_names(name)
                )
            elif kind == "detection":
                found = self._detect(name, image, grid)
                detections += found
                summary.setdefault("detection", {})[name] = found
            else:
                summary.setdefault("diagnosis", {})[name] = self._classify(name, image, grid)
            timings[f"{name}_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        files.update(self._write_segmentations(request.outputs, inp, label_maps, out_dir, summary))
        if "sr" in request.outputs:
            files.update(self._write_sr(inp, detections, out_dir, summary))
        if "png" in request.outputs:
            first = min(label_maps) if label_maps else None
            files["overlay.png"] = write_overlay(
                out_dir / "overlay.png", inp.volume,
                label_maps[first] if first else None,
                self.model.class_names(first) if first else [], detections, modality,
            )
        timings["write_s"] = time.perf_counter() - tick
        timings["total_s"] = time.perf_counter() - start
        summary["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        summary["outputs"] = sorted(files)
        return Prediction(summary, files)

    # ---------------------------------------------------------------------------------------
    def segment(self, name: str, image: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        """Label map ``[*shape]`` of segmentation head ``name`` on a preprocessed ``image
        [1, C, *S]``: sliding window, argmax, nearest resampling onto ``shape``."""
        with self._lock:
            by_slice = self.model.encoder.spatial_dims == 2  # a 2D encoder: axial slice by slice
            logits = (sliding_window_by_slice if by_slice else sliding_window)(
                self.model.segmenter(name), image, self.window, self.overlap,
                self.sw_batch_size, device=self.device, autocast=self.autocast,
            )
            labels = logits.argmax(dim=1, keepdim=True)
            del logits
            if tuple(labels.shape[2:]) != tuple(shape):  # nearest, pixel centres aligned
                dtype = torch.uint8 if self.model.num_classes(name) <= 256 else torch.float32
                labels = F.interpolate(labels.to(dtype), size=shape, mode="nearest-exact")
            label_map = labels[0, 0].cpu().numpy()
        return label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)

    def _detect(self, name: str, image: torch.Tensor, grid: Grid) -> list[dict[str, Any]]:
        with self._lock, torch.inference_mode():
            found = self.model.detect(name, image.to(self.device))[0]
        boxes = found["boxes"].float().cpu().numpy()
        scores = found["labels_scores"].float().cpu().numpy()
        classes = found["labels"].cpu().numpy()
        names = self.model.class_names(name)
        found = []
        for box, score, label in zip(boxes, scores, classes):
            corners = np.array([[box[i] if (c >> i) & 1 else box[i + 3] for i in range(3)]
                                for c in range(8)])  # the 8 corners: exact for oblique grids
            world = grid.to_world(corners)
            found.append({
                "label": names[int(label)] if 0 <= int(label) < len(names) else str(int(label)),
                "score": round(float(score), 6),
                "box_min_ras_mm": [round(float(v), 3) for v in world.min(axis=0)],
                "box_max_ras_mm": [round(float(v), 3) for v in world.max(axis=0)],
            })
        return sorted(found, key=lambda d: -d["score"])

    def _classify(self, name: str, image: torch.Tensor, grid: Grid) -> dict[str, Any]:
        pad = [(-n) % CROP_DIVISOR for n in image.shape[2:]]  # encoders halve 5 times
        padded = F.pad(image, [p for axis in reversed(pad) for p in (0, axis)])
        amp = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast
               else contextlib.nullcontext())
        with self._lock, torch.inference_mode():
            with amp:
                out = self.model.classify(name, padded.to(self.device))
            out = {k: v.float().cpu() for k, v in out.items()}
            evidence = self.model.heads[name].evidence(out, top_k=3)[0]
        on_grid = Grid(grid.affine, grid.input_shape, tuple(padded.shape[2:]),
                       valid=tuple(image.shape[2:]))
        return _diagnosis(out, evidence, self.model.class_names(name),
                          self.model.guideline_texts(name),
                          bool(self.model.specs[name].get("multi_label", False)), on_grid)

    def _write_segmentations(
        self, outputs: frozenset[str], inp: InputVolume, label_maps: dict[str, np.ndarray],
        out_dir: Path, summary: dict[str, Any],
    ) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for index, (name, label_map) in enumerate(sorted(label_maps.items())):
            suffix = "" if index == 0 else f"-{name}"
            if "nifti" in outputs:
                path = out_dir / f"segmentation{suffix}.nii.gz"
                atomic_write_bytes(path, nifti_gz_bytes(Volume(label_map, inp.volume.affine)))
                files[path.name] = path
            if "seg" not in outputs:
                continue
            if not inp.is_dicom:
                summary["notes"].append("seg: not written, the input was not DICOM")
            elif not label_map.any():
                summary["notes"].append(f"seg: not written, head {name} found no structure")
            else:
                path = out_dir / f"seg{suffix}.dcm"
                names = dict(enumerate(self.model.class_names(name)))
                try:
                    write_dicom_seg(label_map, inp.source_datasets, names, path,
                                    algorithm_name=self.name, algorithm_version=self.version,
                                    affine=inp.volume.affine)
                except ValueError as exc:  # the writer's reasons name counts and keywords only
                    summary["notes"].append(f"seg: not written ({exc})")
                    continue
                files[path.name] = path
        return files

    def _write_sr(self, inp: InputVolume, detections: list[dict[str, Any]], out_dir: Path,
                  summary: dict[str, Any]) -> dict[str, Path]:
        if not inp.is_dicom:
            summary["notes"].append("sr: not written, the input was not DICOM")
            return {}
        if not detections:
            summary["notes"].append("sr: not written, nothing was detected")
            return {}
        path = out_dir / "sr.dcm"
        try:
            write_dicom_sr(detections, inp.source_datasets, path, algorithm_name=self.name,
                           algorithm_version=self.version)
        except ValueError as exc:
            summary["notes"].append(f"sr: not written ({exc})")
            return {}
        return {path.name: path}


def _input_summary(inp: InputVolume, modality: str | None, reached: tuple) -> dict[str, Any]:
    """Geometry and kind of the input: numbers only, no header field."""
    return {
        "kind": inp.kind,
        "modality": modality,
        "images": inp.n_images,
        "shape": [int(n) for n in inp.volume.array.shape],
        "spacing_mm": [round(float(s), 4) for s in inp.volume.spacing],
        "model_spacing_mm": [round(float(s), 4) for s in reached],
    }


def _structures(label_map: np.ndarray, affine: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Voxels and volume (mL) of every output value but background."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(label_map.reshape(-1), minlength=len(names))
    return {
        "voxel_ml": round(voxel_ml, 9),
        "structures": [
            {"value": v, "label": names[v] if v < len(names) else str(v),
             "voxels": int(counts[v]), "volume_ml": round(float(counts[v]) * voxel_ml, 4)}
            for v in range(1, len(counts))
        ],
    }


def _diagnosis(out: dict[str, torch.Tensor], evidence: dict[int, list[int]], names: list[str],
               texts: list[str] | None, multi_label: bool, grid: Grid) -> dict[str, Any]:
    """Probabilities per class; per predicted class its top sentences, each with its score and
    the world position (RAS mm) and weight of its attention peak."""
    logits = out["logits"][0]
    probs = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    attention = out["attention"][0]  # [N, *feature grid]
    cells = np.asarray(attention.shape[1:], dtype=float)
    stride = np.asarray(grid.shape, dtype=float) / cells
    found = []
    for c, sentences in evidence.items():
        items = []
        for i in sentences:
            flat = int(attention[i].reshape(-1).argmax())
            cell = np.array(np.unravel_index(flat, attention.shape[1:]), dtype=float)
            peak = grid.to_world(((cell + 0.5) * stride)[None])[0]
            items.append({
                "index": int(i),
                "text": texts[i] if texts is not None and i < len(texts) else None,
                "score": round(float(out["sentence_scores"][0, i]), 6),
                "attention_peak_ras_mm": [round(float(v), 2) for v in peak],
                "attention_peak_weight": round(float(attention[i].reshape(-1)[flat]), 6),
            })
        found.append({"class": names[c], "sentences": items})
    return {
        "probabilities": {names[c]: round(float(p), 6) for c, p in enumerate(probs)},
        "predicted": [names[c] for c in evidence],
        "evidence": found,
        "evidence_texts": texts is not None,
        "attention_grid": [int(n) for n in cells],
    }


def load_predictor(artifact_dir: str | Path, device: str = "auto") -> ArtifactPredictor:
    """The predictor ``medssl serve`` and ``medssl predict`` use for an artifact folder."""
    return ArtifactPredictor(artifact_dir, device=device)


__all__ = ["ArtifactPredictor", "load_predictor", "resolve_device"]
