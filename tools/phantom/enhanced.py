"""Enhanced (multi-frame) CT and MR Image Storage: a whole phantom in one file.

Geometry lives in functional groups (PS3.3 C.7.6.16): the orientation, pixel measures and
(for CT) the rescale are shared by all frames; each frame carries its own
``PlanePositionSequence`` and ``FrameContentSequence`` (stack position, dimension index).
With ``shuffle_frames`` the frame order differs from the spatial order, so readers must
sort by position or dimension index, not by frame number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, EnhancedCTImageStorage, EnhancedMRImageStorage, ExplicitVRLittleEndian

from tools.phantom.dicom_base import (
    derived_uid,
    ds_number,
    new_dataset,
    quantize,
    resolve_transfer_syntax,
    save,
    set_identity,
    set_pixels,
)
from tools.phantom.dicom_series import default_study_uid
from tools.phantom.geometry import SliceGrid, make_slice_grid, sample_on_grid
from tools.phantom.volume import Phantom


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _shared_groups(grid: SliceGrid, modality: str) -> Dataset:
    shared = _item(
        PixelMeasuresSequence=DicomSequence(
            [
                _item(
                    PixelSpacing=[ds_number(v) for v in grid.pixel_spacing],
                    SliceThickness=ds_number(grid.slice_thickness),
                    SpacingBetweenSlices=ds_number(abs(grid.slice_spacing)),
                )
            ]
        ),
        PlaneOrientationSequence=DicomSequence(
            [
                _item(
                    ImageOrientationPatient=[ds_number(v) for v in grid.image_orientation],
                )
            ]
        ),
    )
    if modality == "CT":
        shared.PixelValueTransformationSequence = DicomSequence(
            [
                _item(
                    RescaleIntercept="-1024",
                    RescaleSlope="1",
                    RescaleType="HU",
                )
            ]
        )
        shared.FrameVOILUTSequence = DicomSequence([_item(WindowCenter="40", WindowWidth="400")])
        shared.CTImageFrameTypeSequence = DicomSequence(
            [_item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])]
        )
    else:
        shared.MRImageFrameTypeSequence = DicomSequence(
            [
                _item(
                    FrameType=["ORIGINAL", "PRIMARY", "M", "NONE"],
                    PixelPresentation="MONOCHROME",
                    VolumetricProperties="VOLUME",
                    VolumeBasedCalculationTechnique="NONE",
                    ComplexImageComponent="MAGNITUDE",
                    AcquisitionContrast="T1",
                )
            ]
        )
    return shared


def _frame_group(grid: SliceGrid, position: int) -> Dataset:
    return _item(
        FrameContentSequence=DicomSequence(
            [
                _item(
                    StackID="1",
                    InStackPositionNumber=position + 1,
                    DimensionIndexValues=[1, position + 1],
                )
            ]
        ),
        PlanePositionSequence=DicomSequence(
            [
                _item(
                    ImagePositionPatient=[ds_number(v) for v in grid.positions[position]],
                )
            ]
        ),
    )


def _dimensions(ds: Dataset, organization_uid: UID) -> None:
    ds.DimensionOrganizationSequence = DicomSequence(
        [_item(DimensionOrganizationUID=organization_uid)]
    )
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=Tag("StackID"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=Tag("InStackPositionNumber"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )


def write_enhanced_multiframe(
    phantom: Phantom,
    path: str | Path,
    *,
    modality: str | None = None,
    patient_name: str = "PHANTOM^TORSO",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str | None = None,
    orientation: str | Sequence[float] = "axial",
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_frames: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``phantom`` as one Enhanced CT or Enhanced MR Image Storage file at ``path``.

    modality: ``"CT" | "MR"``, defaults to (and must equal) ``phantom.modality``. CT frames
    are uint16 with a shared rescale (-1024, 1) to HU; MR frames are rounded uint16.
    orientation: as in :func:`tools.phantom.dicom_series.write_ct_series`;
    shuffle_frames: store frames in a seeded random order (positions stay truthful).
    Returns ``path``.
    """
    modality = modality or phantom.modality
    if modality not in ("CT", "MR") or modality != phantom.modality:
        raise ValueError(
            f"modality {modality!r} must be 'CT' or 'MR' and match the {phantom.modality} phantom"
        )
    ts = resolve_transfer_syntax(transfer_syntax)
    grid = make_slice_grid(phantom, orientation)
    values = sample_on_grid(
        phantom.image, phantom.affine, grid, order=1, cval=phantom.background_value
    )
    intercept = -1024.0 if modality == "CT" else 0.0
    stored = quantize(values, slope=1.0, intercept=intercept, signed=False, bits_stored=12)
    order = np.arange(grid.n_slices)
    if shuffle_frames:
        order = np.random.default_rng([int(seed), 0xF4A3E]).permutation(grid.n_slices)

    study_uid = UID(study_uid) if study_uid else default_study_uid(patient_id, phantom.seed)
    series_uid = (
        UID(series_uid) if series_uid else derived_uid(study_uid, "series", series_number, seed)
    )
    sop_class = EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage
    ds = new_dataset(sop_class, derived_uid(series_uid, "multiframe"), ts)
    set_identity(
        ds,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        modality=modality,
        series_description=series_description or f"{modality} enhanced multi-frame",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "M", "NONE"]
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = derived_uid(study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    if modality == "MR":
        ds.PixelPresentation = "MONOCHROME"
        ds.VolumetricProperties = "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "T1"
        ds.MagneticFieldStrength = "1.5"
    _dimensions(ds, derived_uid(series_uid, "dimension-organization"))
    ds.SharedFunctionalGroupsSequence = DicomSequence([_shared_groups(grid, modality)])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_frame_group(grid, int(p)) for p in order])
    set_pixels(ds, np.ascontiguousarray(stored[order]), bits_stored=12)
    return save(ds, Path(path))
