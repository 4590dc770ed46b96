"""The pieces of a prediction's JSON summary that are pure functions of arrays and geometry.

Numbers, names of structures and classes, modality codes: never a header field that could
identify anyone, never a UID or a file name (docs/identifiers.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medssl.inference.inputs import Grid, InputVolume
from medssl.inference.modality import ModalityCheck
from medssl.types import OutputClass


def input_summary(inp: InputVolume, modality: ModalityCheck, reached: tuple) -> dict[str, Any]:
    """Kind, modality (null when unknown) and geometry of the input, on its own grid: ``shape``
    and ``spacing_mm`` in the input's axis order, ``axes`` where each axis points (``"PIR"``),
    ``output_grid`` the grid label maps are written on (``"input"`` or ``"ras_canonical"``)."""
    native = inp.native
    spacing = inp.volume.spacing
    if native is not None:
        spacing = tuple(float(v) for v in np.linalg.norm(native.affine[:3, :3], axis=0))
    return {
        "kind": inp.kind,
        "modality": modality.modality,
        "modality_source": str(modality.source),
        "normalised_as": modality.normalised_as,
        "trained_modalities": list(modality.trained),
        "images": inp.n_images,
        "shape": [int(n) for n in (native.shape if native is not None else inp.volume.array.shape)],
        "axes": native.axcodes if native is not None else inp.volume.axcodes,
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "model_spacing_mm": [round(float(s), 4) for s in reached],
        "output_grid": "input" if native is not None else "ras_canonical",
    }


def class_values(indices: np.ndarray, classes: Sequence[OutputClass]) -> np.ndarray:
    """A map of class indices -> the same map in the training masks' label values
    (uint8, or uint16 when a value exceeds 255)."""
    lut = np.zeros(max(len(classes), int(indices.max(initial=0)) + 1), dtype=np.int64)
    lut[: len(classes)] = [c.value for c in classes]
    values = lut[indices]
    return values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)


def structures(label_map: np.ndarray, affine: np.ndarray, classes: Sequence[OutputClass]) -> dict[str, Any]:
    """Voxels and volume (mL) of every class but background, by its label value and name."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(label_map.reshape(-1), minlength=max((c.value for c in classes), default=0) + 1)
    return {
        "voxel_ml": round(voxel_ml, 9),
        "structures": [
            {"value": c.value, "label": c.name, "voxels": int(counts[c.value]),
             "volume_ml": round(float(counts[c.value]) * voxel_ml, 4)}
            for c in classes if c.index != 0
        ],
    }


def diagnosis(out: dict[str, torch.Tensor], evidence: dict[int, list[int]], names: list[str],
              texts: list[str] | None, multi_label: bool, grid: Grid,
              shares: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Probabilities per class; per predicted class its top sentences, each with its score and
    the world position (RAS mm) and weight of its attention peak, and (given ``shares``, each
    ``[B, K]``) each decoder path's share of that class's logit: the sentences explain the
    ``guideline_queries`` share only."""
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
        entry: dict[str, Any] = {"class": names[c], "sentences": items}
        if shares is not None:
            entry["path_shares"] = {path: round(float(v[0, c]), 6) for path, v in shares.items()}
        found.append(entry)
    return {
        "probabilities": {names[c]: round(float(p), 6) for c, p in enumerate(probs)},
        "predicted": [names[c] for c in evidence],
        "evidence": found,
        "evidence_texts": texts is not None,
        "attention_grid": [int(n) for n in cells],
    }


__all__ = ["class_values", "diagnosis", "input_summary", "structures"]
