"""Which modality an input is, which the model was trained on, and what to do when they differ.

A DICOM series says its modality (``Modality``); a NIfTI or NRRD says none, so it is unknown
unless the user states it (``--modality``, or ``?modality=`` on ``/v1/predict``); it is never
taken from the artifact. The artifact's trained modalities are ``artifact.json``
``modalities`` (recorded by fine-tuning from its training volumes), else its plan's
normalisation modalities (older artifacts).

:func:`check_modality` decides, per prediction:

- known and trained: normalised as itself, nothing to say;
- known, not trained: a warning naming both (``strict``: :class:`InputError`);
- unknown, the model trained on modality-less volumes (``OT``): normalised as those;
- unknown, one trained modality: that modality's normalisation, with a warning that it was
  assumed (``strict``: refused); several: the plan's default (per-volume z-score), a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from medssl.inference.predictor import InputError
from medssl.store.selection import OTHER_MODALITY

MODALITY_PATTERN = re.compile(r"[A-Z0-9]{1,16}")  # DICOM Modality is CS: upper case, short
MODALITY_MISMATCH = "modality_mismatch"  # the InputError code of a refusal


class ModalitySource(StrEnum):
    """Where the input's modality came from."""

    DICOM = "dicom"  # the series' Modality attribute
    USER = "user"  # --modality / ?modality=
    UNKNOWN = "unknown"  # a NIfTI/NRRD without a stated modality


@dataclass(frozen=True)
class ModalityCheck:
    """The outcome for one input.

    modality: the input's modality, or None when unknown; source: where it came from;
    normalised_as: the modality whose plan normalisation was applied (None: the plan's
    default); trained: the artifact's modalities; warnings: lines for the summary.
    """

    modality: str | None
    source: ModalitySource
    normalised_as: str | None
    trained: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def parse_modality(value: str | None, where: str = "--modality") -> str | None:
    """A user-given modality in DICOM's spelling (``"mr"`` -> ``"MR"``); InputError if not one."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip().upper()
    if not MODALITY_PATTERN.fullmatch(text):
        raise InputError(f"{where}: a modality is 1-16 letters or digits (CT, MR, PT...), got {len(str(value))} characters")
    return text


def check_modality(
    kind: str, header_modality: str | None, given: str | None, trained: tuple[str, ...], *, strict: bool = False
) -> ModalityCheck:
    """Decide the modality of one input (see the module docstring).

    Args:
        kind: ``"dicom"``, ``"nifti"`` or ``"nrrd"`` (for the messages).
        header_modality: the DICOM series' Modality (None for NIfTI/NRRD).
        given: the modality the user stated, or None.
        trained: the artifact's modalities (upper case).
        strict: refuse, instead of warning, an input whose modality is not a trained one.

    Raises:
        InputError: ``strict`` and the modality is unknown or not trained (``code``
            :data:`MODALITY_MISMATCH`).
    """
    trained = tuple(sorted({m.upper() for m in trained}))
    shown = ", ".join(trained) or "no recorded modality"
    warnings: list[str] = []
    if header_modality:
        modality, source = header_modality.upper(), ModalitySource.DICOM
        if given and given != modality:
            warnings.append(f"--modality {given} ignored: the DICOM series says {modality}")
    elif given:
        modality, source = given, ModalitySource.USER
    else:
        modality, source = None, ModalitySource.UNKNOWN
    if modality is not None:
        if trained and modality not in trained:
            _refuse_if(strict, f"input modality {modality}; the model was trained on {shown} only")
            warnings.append(f"input modality {modality}, but the model was trained on {shown} only: "
                            "results may be unreliable")
        return ModalityCheck(modality, source, modality, trained, tuple(warnings))
    if OTHER_MODALITY in trained or not trained:  # trained on modality-less volumes too
        return ModalityCheck(None, source, OTHER_MODALITY if trained else None, trained, tuple(warnings))
    what = "the DICOM series has no Modality" if kind == "dicom" else f"a {kind.upper()} file carries no modality"
    _refuse_if(strict, f"input modality unknown ({what}); the model was trained on {shown}: "
                       "pass the input's modality")
    if len(trained) == 1:
        warnings.append(f"input modality unknown ({what}): assumed {trained[0]}, the only modality "
                        f"the model was trained on, for intensity normalisation; pass the modality to state it")
        return ModalityCheck(None, source, trained[0], trained, tuple(warnings))
    warnings.append(f"input modality unknown ({what}): normalised by the plan's default, not a "
                    f"trained modality ({shown}); pass the modality to state it")
    return ModalityCheck(None, source, None, trained, tuple(warnings))


def _refuse_if(strict: bool, message: str) -> None:
    if strict:
        err = InputError(f"[{MODALITY_MISMATCH}] {message} (strict modality)")
        err.code = MODALITY_MISMATCH  # type: ignore[attr-defined]
        raise err


__all__ = ["MODALITY_MISMATCH", "ModalityCheck", "ModalitySource", "check_modality", "parse_modality"]
