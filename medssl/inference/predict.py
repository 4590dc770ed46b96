"""``ArtifactPredictor``: an artifact behind the :class:`~medssl.inference.predictor.Predictor` protocol.

One prediction: read the upload with the ingest readers (``inputs.read_input``), preprocess
it with the artifact's plan (:func:`medssl.preprocess.stage.preprocess`: the same function
that built the training cache), run every head, bring results back to the input's world
geometry, write the outputs asked for. Per head kind:

* segmentation: ``sliding_window`` (window = the plan's crop size, Gaussian blending, bf16
  autocast on CUDA, fp32 on CPU), argmax, label map resampled onto the input grid (nearest;
  the preprocessed grid spans the input's field of view), class indices turned into the
  training masks' label values (artifact ``label_values``), then put back into the input's
  own voxel order (``native_grid``) -> ``segmentation.nii.gz`` with the input's shape,
  affine and qform/sform (deterministic bytes) and, for DICOM input, ``seg.dcm`` on the
  source images; per-structure volumes in mL, by value and name, in the summary.
* detection: the detector on the whole preprocessed volume (fp32); boxes mapped to world
  RAS mm -> summary, and ``sr.dcm`` (TID 1500) for DICOM input with any detection.
* classification: class probabilities, the top guideline sentences of the predicted class
  as evidence (texts where the artifact carries them, else indices), where each of those
  sentences attended (world RAS mm of the attention peak), and each decoder path's share of
  the predicted class's logit (label queries, guideline queries, a linear bypass if built).

The input's modality is checked against the artifact's (``modality.check_modality``): a
mismatch, or a NIfTI/NRRD whose modality had to be assumed, is a line in the summary's
``warnings``, or a refusal with ``strict_modality``. The summary is built from model outputs
and geometry only (docs/identifiers.md): no header field, no UID, no file name. Model compute holds a lock, so concurrent ``predict`` calls
share one model safely while their reading and writing overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
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
from medssl.inference.cancel import check_cancelled
from medssl.inference.declared import DeclaredVolume
from medssl.inference.inputs import Grid, InputVolume, read_input
from medssl.inference.modality import check_modality, parse_modality
from medssl.inference.model import InferenceModel
from medssl.inference.overlay import write_overlay
from medssl.inference.predictor import OUTPUT_KINDS, Prediction, PredictionRequest
from medssl.inference.sliding_window import sliding_window, sliding_window_by_slice
from medssl.inference.summary import class_values, diagnosis, input_summary, structures
from medssl.io.seg_writer import write_dicom_seg
from medssl.io.sr_writer import write_dicom_sr
from medssl.io.volume import Volume, nifti_gz_bytes
from medssl.memory.prediction import model_grid, prediction_peak
from medssl.memory.sliding import sliding_window_cost
from medssl.memory.trace import trace_forward
from medssl.memory.window_batch import window_batch_on
from medssl.preprocess.stage import preprocess
from medssl.store.plan import CROP_DIVISOR, Plan
from medssl.types import TaskKind

log = logging.getLogger("medssl.predict")


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
        modality: the modality of NIfTI/NRRD inputs (they carry none) when a request does not
            state one; default unknown (see :mod:`medssl.inference.modality`).
        allow_irregular: resample irregular DICOM stacks instead of refusing them.
        strict_modality: refuse inputs whose modality is unknown or not a trained one,
            instead of predicting with a warning.
    """

    def __init__(
        self,
        artifact_dir: str | Path,
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        modality: str | None = None,
        allow_irregular: bool = False,
        strict_modality: bool = False,
    ) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.artifact = load_artifact(artifact_dir)
        plan = self.artifact.plan  # ArtifactError when the recorded plan does not parse
        if plan is None:
            raise ArtifactError(
                f"artifact {self.artifact.path}: no preprocessing plan; export it with --store"
            )
        self.plan: Plan = plan
        self.device = resolve_device(device)
        self.model = InferenceModel.from_artifact(self.artifact, self.device)
        flat = self.model.encoder.spatial_dims == 2
        kinds = sorted({str(k) for k in self.model.kinds.values()})
        if flat and kinds != [TaskKind.SEGMENTATION]:
            raise ArtifactError(
                f"artifact {self.artifact.path}: a 2D encoder predicts volumes slice by slice for segmentation only; its heads are {kinds}"
            )
        # the window of the training crops: 2D encoders segment volumes slice by slice
        self.window = tuple(self.plan.crop_size_2d if flat else self.plan.crop_size)
        self.overlap, self.sw_batch_size = float(overlap), int(sw_batch_size)
        self.allow_irregular = allow_irregular
        self.default_modality = parse_modality(modality)
        self.trained_modalities = self.artifact.modalities
        self.strict_modality = bool(strict_modality)
        self.autocast = torch.bfloat16 if self.device.type == "cuda" else None
        self._lock = threading.Lock()
        self._window_peak: dict[str, int] = {}  # head -> traced forward peak of one window
        self.name = self.artifact.path.name or "model"
        self.version = str(self.artifact.meta.get("weights_sha256", ""))[:12] or "unknown"
        self.info = self._info()

    def _info(self) -> dict[str, Any]:
        kinds = self.model.kinds
        return {
            "name": self.name,
            "task": "+".join(sorted({str(k) for k in kinds.values()})),
            "heads": {name: str(kind) for name, kind in sorted(kinds.items())},
            "labels": self.artifact.labels,
            "label_values": [c.value for c in self.artifact.output_classes] or None,
            "modalities": list(self.trained_modalities),
            "strict_modality": self.strict_modality,
            "backbone": self.artifact.backbone_name,
            "artifact_sha256": self.artifact.meta.get("artifact_sha256"),  # the whole artifact's
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
                if kind is TaskKind.SEGMENTATION:
                    sliding_window(self.model.segmenter(name), x, self.window,
                                   self.overlap, 1, autocast=self.autocast)
                elif kind is TaskKind.DETECTION:
                    self.model.detect(name, x)
                else:
                    self.model.classify(name, x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _footer(self, inp: InputVolume) -> str:
        """The overlay's footer: the model, and the input by a digest of its voxels (no identifier)."""
        voxels = hashlib.sha256(np.ascontiguousarray(inp.volume.array).tobytes()).hexdigest()[:12]
        shape = "x".join(str(n) for n in inp.volume.array.shape)
        spacing = "x".join(f"{s:g}" for s in np.round(inp.volume.spacing[:3], 2))
        m = self.info
        return f"model {m['name']} ({m['task']}, {m['backbone']}, artifact {str(m['artifact_sha256'])[:12]}) · input {inp.kind} {shape} at {spacing} mm, voxels sha256 {voxels} · medssl predict"

    def predict(self, request: PredictionRequest) -> Prediction:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        inp = read_input(request.inputs, allow_irregular=self.allow_irregular)
        timings["read_s"] = time.perf_counter() - start
        check_cancelled()  # between steps: a request given up stops (medssl.inference.cancel)
        modality = check_modality(inp.kind, inp.modality, request.modality or self.default_modality,
                                  self.trained_modalities, strict=self.strict_modality)
        out_dir = request.output_dir or Path(tempfile.mkdtemp(prefix="medssl-predict-"))
        tick = time.perf_counter()
        array, reached = preprocess(inp.volume.array, inp.volume.spacing, modality.normalised_as, self.plan)
        image = torch.from_numpy(np.asarray(array, dtype=np.float32))[None, None]
        timings["preprocess_s"] = time.perf_counter() - tick
        grid = Grid(inp.volume.affine, tuple(inp.volume.array.shape), tuple(image.shape[2:]))
        summary: dict[str, Any] = {
            "model": {k: self.info[k] for k in ("name", "task", "backbone", "artifact_sha256")},
            "input": input_summary(inp, modality, reached),
            "warnings": list(modality.warnings),
            "notes": [],
        }
        files: dict[str, Path] = {}
        label_maps: dict[str, np.ndarray] = {}
        detections: list[dict[str, Any]] = []
        for name, kind in sorted(self.model.kinds.items()):
            check_cancelled()
            tick = time.perf_counter()
            if kind is TaskKind.SEGMENTATION:
                classes = self.model.output_classes(name)
                label_maps[name] = class_values(self.segment(name, image, grid.input_shape), classes)
                summary.setdefault("segmentation", {})[name] = structures(
                    label_maps[name], inp.volume.affine, classes
                )
            elif kind is TaskKind.DETECTION:
                found = self._detect(name, image, grid)
                detections += found
                summary.setdefault("detection", {})[name] = found
            else:
                summary.setdefault("diagnosis", {})[name] = self._classify(name, image, grid)
            timings[f"{name}_s"] = time.perf_counter() - tick
        check_cancelled()
        tick = time.perf_counter()
        files.update(self._write_segmentations(request.outputs, inp, label_maps, out_dir, summary))
        if "sr" in request.outputs:
            files.update(self._write_sr(inp, detections, out_dir, summary))
        if "png" in request.outputs:
            first = min(label_maps) if label_maps else None
            names = {c.value: c.name for c in self.model.output_classes(first)} if first else {}
            files["overlay.png"] = write_overlay(
                out_dir / "overlay.png", inp.volume, label_maps[first] if first else None,
                names, detections, modality.modality or modality.normalised_as, self._footer(inp),
            )
        timings["write_s"] = time.perf_counter() - tick
        timings["total_s"] = time.perf_counter() - start
        summary["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        summary["outputs"] = sorted(files)
        return Prediction(summary, files)

    # ---------------------------------------------------------------------------------------
    def segment(self, name: str, image: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
        """Class indices ``[*shape]`` of segmentation head ``name`` on a preprocessed ``image
        [1, C, *S]``: sliding window, argmax, nearest resampling onto ``shape``."""
        with self._lock:
            by_slice = self.model.encoder.spatial_dims == 2  # a 2D encoder: axial slice by slice
            logits = (sliding_window_by_slice if by_slice else sliding_window)(
                self.model.segmenter(name), image, self.window, self.overlap,
                self.window_batch(name, tuple(image.shape[2:])), device=self.device, autocast=self.autocast,
            )
            labels = logits.argmax(dim=1, keepdim=True)
            del logits
            if tuple(labels.shape[2:]) != tuple(shape):  # nearest, pixel centres aligned
                dtype = torch.uint8 if self.model.num_classes(name) <= 256 else torch.float32
                labels = F.interpolate(labels.to(dtype), size=shape, mode="nearest-exact")
            label_map = labels[0, 0].cpu().numpy()
        return label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)

    def window_batch(self, name: str, shape: tuple[int, ...]) -> int:
        """Windows per forward pass for a preprocessed volume of ``shape``: ``sw_batch_size``, or
        fewer, or :class:`~medssl.memory.MemoryBudgetError` (:mod:`medssl.memory.window_batch`)."""
        return window_batch_on(self.device, self._window_cost(name, shape), self.sw_batch_size, shape)

    def _window_cost(self, name: str, shape: tuple[int, ...]):
        if name not in self._window_peak:  # traced once on fake tensors: nothing allocated
            window = (1, self.model.encoder.in_channels, *self.window)
            self._window_peak[name] = trace_forward(self.model.segmenter(name), window, self.device, self.autocast).peak
        return sliding_window_cost(shape, self.window, self.model.num_classes(name), self._window_peak[name])

    def memory_needed(self, declared: DeclaredVolume) -> int:
        """Host bytes predicting a volume of ``declared`` size reaches (:mod:`medssl.memory.prediction`;
        the sliding window's part counted where it runs on the CPU): the server refuses more than its
        budget before the upload is read."""
        grid = model_grid(declared.shape[:3], declared.spacing, self.plan.target_spacing)
        heads = [n for n, k in self.model.kinds.items() if k is TaskKind.SEGMENTATION]
        windows = [self._window_cost(n, grid) for n in heads] if self.device.type == "cpu" else []
        return prediction_peak(voxels=declared.voxels, itemsize=declared.itemsize, stored_bytes=declared.nbytes,
                               model_voxels=int(np.prod(grid)), windows=windows, heads=max(len(heads), 1))

    def _detect(self, name: str, image: torch.Tensor, grid: Grid) -> list[dict[str, Any]]:
        with self._lock, torch.inference_mode():
            found = self.model.detect(name, image.to(self.device))[0]
        boxes = found["boxes"].float().cpu().numpy()
        scores = found["labels_scores"].float().cpu().numpy()
        classes = found["labels"].cpu().numpy()
        names = self.model.class_names(name)
        values = [c.value for c in self.model.output_classes(name)]
        found = []
        for box, score, label in zip(boxes, scores, classes):
            corners = np.array([[box[i] if (c >> i) & 1 else box[i + 3] for i in range(3)]
                                for c in range(8)])  # the 8 corners: exact for oblique grids
            world = grid.to_world(corners)
            found.append({
                "label": names[int(label)] if 0 <= int(label) < len(names) else str(int(label)),
                "value": values[int(label)] if 0 <= int(label) < len(values) else int(label),
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
            head = self.model.heads[name]
            evidence = head.evidence(out, top_k=3)[0]
            shares = head.path_shares(out)
        on_grid = Grid(grid.affine, grid.input_shape, tuple(padded.shape[2:]),
                       valid=tuple(image.shape[2:]))
        return diagnosis(out, evidence, self.model.class_names(name),
                          self.model.guideline_texts(name),
                          bool(self.model.specs[name].kwargs.get("multi_label", False)), on_grid,
                          shares)

    def _write_segmentations(
        self, outputs: frozenset[str], inp: InputVolume, label_maps: dict[str, np.ndarray],
        out_dir: Path, summary: dict[str, Any],
    ) -> dict[str, Path]:
        """NIfTI (and DICOM SEG) of every segmentation head, on the input's own grid."""
        files: dict[str, Path] = {}
        native = inp.native
        if label_maps and native is None:
            summary["notes"].append("segmentation: written on the RAS+ canonical grid; the input's "
                                    "own axis order could not be recovered exactly")
        for index, (name, canonical) in enumerate(sorted(label_maps.items())):
            suffix = "" if index == 0 else f"-{name}"
            label_map = native.from_canonical(canonical) if native is not None else canonical
            affine = native.affine if native is not None else inp.volume.affine
            if "nifti" in outputs:
                path = out_dir / f"segmentation{suffix}.nii.gz"
                data = (native.nifti_bytes(label_map) if native is not None
                        else nifti_gz_bytes(Volume(label_map, affine)))
                atomic_write_bytes(path, data)
                files[path.name] = path
            if "seg" not in outputs:
                continue
            if not inp.is_dicom:
                summary["notes"].append("seg: not written, the input was not DICOM")
            elif not label_map.any():
                summary["notes"].append(f"seg: not written, head {name} found no structure")
            else:
                path = out_dir / f"seg{suffix}.dcm"
                names = {c.value: c.name for c in self.model.output_classes(name)}
                try:
                    write_dicom_seg(label_map, inp.source_datasets, names, path,
                                    algorithm_name=self.name, algorithm_version=self.version,
                                    affine=affine)
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


def load_predictor(artifact_dir: str | Path, device: str = "auto",
                   strict_modality: bool = False) -> ArtifactPredictor:
    """The predictor ``medssl serve`` and ``medssl predict`` use for an artifact folder."""
    return ArtifactPredictor(artifact_dir, device=device, strict_modality=strict_modality)


__all__ = ["ArtifactPredictor", "load_predictor", "resolve_device"]
