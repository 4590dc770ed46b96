"""2D projection radiographs (DX / CR) of a CT phantom: a parallel-beam digital reconstruction.

The image is the line integral of linear attenuation through the phantom along the
anterior-posterior axis, ``mu = 0.02 / mm * max(0, 1 + HU / 1000)``, stored linearly in
12 bits (``stored = min(4095, round(400 * integral))``): bone bright, lung dark, as a
processed "for presentation" radiograph shows it.

Display orientation is the standard frontal chest view: image rows run head → feet, image
columns run from the patient's right to their left (the patient's right on the viewer's
left), so ``PatientOrientation = ["L", "F"]``. Pixel ``(r, c)`` integrates the phantom
column ``i = I - 1 - c``, ``k = K - 1 - r``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from tools.phantom.anatomy import make_ct_phantom
from tools.phantom.dicom_base import (
    default_study_uid,
    derived_uid,
    ds_number,
    new_dataset,
    resolve_transfer_syntax,
    save,
    set_identity,
    set_pixels,
)
from tools.phantom.volume import Phantom

MU_WATER_PER_MM = 0.02
STORED_PER_UNIT = 400.0


def project_ap(phantom: Phantom) -> np.ndarray:
    """``[K, I]`` float32 attenuation line integrals in radiograph display orientation."""
    if phantom.modality != "CT":
        raise ValueError(f"a radiograph needs a CT phantom (HU), got {phantom.modality}")
    mu = MU_WATER_PER_MM * np.clip(1.0 + phantom.image / 1000.0, 0.0, None)
    integral = mu.sum(axis=1) * phantom.spacing[1]  # [I, K]
    return integral[::-1, ::-1].T.astype(np.float32)


def lesion_boxes_2d(phantom: Phantom) -> dict[int, tuple[int, int, int, int]]:
    """Each lesion's box in radiograph pixels, ``label -> (row0, col0, row1, col1)`` half-open."""
    n_i, _, n_k = phantom.shape
    boxes = {}
    for lesion in phantom.lesions:
        i0, _, k0, i1, _, k1 = lesion.bbox
        boxes[lesion.label] = (n_k - k1, n_i - i1, n_k - k0, n_i - i0)
    return boxes


def write_radiograph(
    path: str | Path,
    *,
    phantom: Phantom | None = None,
    modality: str = "DX",
    view_position: str = "PA",
    patient_name: str = "PHANTOM^TORSO",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Path:
    """Write a frontal radiograph of ``phantom`` (default: a seeded 160 x 96 x 160 CT phantom).

    modality: ``"DX"`` (Digital X-Ray Image Storage - For Presentation) or ``"CR"``;
    the image is ``[K, I]`` pixels with ``PixelSpacing = ImagerPixelSpacing = (sk, si)`` mm.
    Returns ``path``. See :func:`lesion_boxes_2d` for the lesions' 2D boxes.
    """
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be 'DX' or 'CR', got {modality!r}")
    if phantom is None:
        phantom = make_ct_phantom((160, 96, 160), (2.5, 3.0, 2.0), seed=seed)
    ts = resolve_transfer_syntax(transfer_syntax)
    stored = np.clip(np.rint(project_ap(phantom) * STORED_PER_UNIT), 0, 4095).astype(np.uint16)

    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    sop_class = (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else ComputedRadiographyImageStorage
    )
    ds = new_dataset(sop_class, derived_uid(series_uid, "radiograph"), ts)
    set_identity(
        ds,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        modality=modality,
        series_description=series_description or f"CHEST {view_position}",
    )
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.KVP = "120"
    spacing = [ds_number(phantom.spacing[2]), ds_number(phantom.spacing[0])]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.DetectorType = "DIRECT"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    set_pixels(ds, stored, bits_stored=12)
    return save(ds, Path(path))
