"""What the serving side asks of a model: the :class:`Predictor` protocol and its messages.

``medssl serve`` and ``medssl predict`` talk to a model only through this protocol, so the
HTTP layer never knows about backbones, plans or sliding windows, and tests can serve a
small real predictor. The artifact-backed implementation is
``medssl.inference.predict.load_predictor(artifact_dir, device) -> Predictor``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medssl.errors import MedsslError

OUTPUT_KINDS = frozenset({"json", "nifti", "seg", "sr", "png"})


class InputError(MedsslError):
    """Bad input: the message names what is wrong (never a patient identifier). HTTP 422."""


@dataclass(frozen=True)
class PredictionRequest:
    """One prediction's inputs and the outputs wanted.

    Attributes:
        inputs: files written from an upload into a private folder: DICOM files, one zip,
            or one NIfTI/NRRD. Their names carry no client-given text.
        outputs: any of :data:`OUTPUT_KINDS`.
        output_dir: a private, existing, empty folder for the output files (deleted by the
            caller after use); ``None`` lets the predictor choose a temporary folder.
        modality: the input's modality as the user states it (``"MR"``): NIfTI and NRRD carry
            none; a DICOM series' own Modality wins. ``None``: the predictor's default.
    """

    inputs: tuple[Path, ...]
    outputs: frozenset[str] = frozenset({"json"})
    output_dir: Path | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InputError("no input files: upload DICOM files, one zip, or one NIfTI/NRRD")
        unknown = sorted(set(self.outputs) - OUTPUT_KINDS)
        if unknown:
            raise InputError(f"unknown outputs {unknown}; choose from {sorted(OUTPUT_KINDS)}")
        if self.modality is not None and not (self.modality.isalnum() and self.modality.isupper()
                                              and len(self.modality) <= 16):
            raise InputError(f"modality must be 1-16 upper-case letters or digits (CT, MR, PT...), got {len(self.modality)} characters")


@dataclass(frozen=True)
class Prediction:
    """A prediction: a JSON-able, pseudonymous ``summary`` and output files by name.

    ``files`` maps an output name (``segmentation.nii.gz``, ``seg.dcm``, ``sr.dcm``,
    ``overlay.png``) to the file holding it.
    """

    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


@runtime_checkable
class Predictor(Protocol):
    """A loaded model that turns uploaded files into a :class:`Prediction`.

    ``info`` is what ``GET /v1/models`` shows: name, task, labels, artifact sha256, plan
    summary, trained modalities. A summary may hold ``warnings`` (a list of lines, e.g. an
    input of another modality than the model was trained on). ``predict`` raises :class:`InputError` for bad input and must be safe to call
    from several threads at once when the server allows concurrent predictions.
    """

    info: dict[str, Any]

    def warmup(self) -> None: ...

    def predict(self, request: PredictionRequest) -> Prediction: ...


__all__ = ["OUTPUT_KINDS", "InputError", "Prediction", "PredictionRequest", "Predictor"]
