"""What a SEG or SR sent back to the source PACS may carry: an explicit allow-list.

highdicom builds a derived object by copying the source's whole Patient and Study modules
(IssuerOfPatientID, PatientAge, PatientWeight, PatientComments, StudyDescription, clinical
trial attributes ...) and a ContributingEquipmentSequence naming the scanner (institution,
address, department, station, serial number). The PACS needs far less to file the result
under the right patient and study (docs/identifiers.md), so after highdicom has built the
object, :func:`keep_allowed` deletes every element, at any depth, whose keyword is not on
the object's list; private elements (no keyword) always go.

Three parts make up each list: :data:`FROM_SOURCE` (copied from the source and needed for
filing), the attributes medssl itself sets or derives (its own equipment and algorithm,
new UIDs, geometry, references to the source images), and the IOD's structure.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["FROM_SOURCE", "NEVER_CARRIED", "SEG_ATTRIBUTES", "SR_ATTRIBUTES", "keep_allowed"]

# Copied from the source: the PACS files a result by these (PS3.3 C.7.1.1, C.7.2.1).
FROM_SOURCE = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "FrameOfReferenceUID",
        "SpecificCharacterSet",  # how the copied names are encoded
    }
)

# Free text and the source's equipment identity, found in SEGs/SRs by a red-team sweep.
# Never carried; listed so a test checks that no allow-list ever grows to include one.
# (The source's DeviceSerialNumber goes with ContributingEquipmentSequence; the SEG's own
# DeviceSerialNumber, required by its equipment module, is medssl's "none".)
NEVER_CARRIED = frozenset(
    {
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "PatientAddress",
        "PatientComments",
        "AdditionalPatientHistory",
        "StudyDescription",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "OperatorsName",
        "PerformingPhysicianName",
        "ContributingEquipmentSequence",
    }
)

# Set by medssl (Manufacturer "medssl", its model and version, new UIDs and numbers).
_MEDSSL_EQUIPMENT = frozenset(
    {
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        "SOPClassUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "InstanceNumber",
        "Modality",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "ContentDate",
        "ContentTime",
    }
)

# Code sequences and references to the source images, shared by SEG and SR.
_SHARED = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodeMeaning",
        "ReferencedSeriesSequence",
        "ReferencedInstanceSequence",
        "ReferencedSOPClassUID",
        "ReferencedSOPInstanceUID",
        "PurposeOfReferenceCodeSequence",
    }
)

_SEG_STRUCTURE = frozenset(
    {
        "ImageType",
        "DeviceSerialNumber",  # type 1 in the SEG's equipment module: medssl writes "none"
        "PositionReferenceIndicator",  # type 2: emptied by the writer, see seg_writer
        "SourceImageSequence",
        "DimensionOrganizationSequence",
        "DimensionOrganizationUID",
        "DimensionIndexSequence",
        "DimensionIndexPointer",
        "FunctionalGroupPointer",
        "DimensionDescriptionLabel",
        "DimensionOrganizationType",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "LossyImageCompression",
        "SegmentationType",
        "SegmentSequence",
        "SegmentNumber",
        "SegmentLabel",
        "SegmentAlgorithmType",
        "SegmentAlgorithmName",
        "SegmentedPropertyCategoryCodeSequence",
        "SegmentedPropertyTypeCodeSequence",
        "SegmentationAlgorithmIdentificationSequence",
        "AlgorithmFamilyCodeSequence",
        "AlgorithmName",
        "AlgorithmVersion",
        "SegmentsOverlap",
        "ContentLabel",
        "ContentDescription",
        "PresentationLUTShape",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
        "PixelMeasuresSequence",
        "PixelSpacing",
        "SliceThickness",
        "SpacingBetweenSlices",
        "PlaneOrientationSequence",
        "ImageOrientationPatient",
        "PlanePositionSequence",
        "ImagePositionPatient",
        "FrameContentSequence",
        "DimensionIndexValues",
        "DerivationImageSequence",
        "DerivationCodeSequence",
        "SpatialLocationsPreserved",
        "SegmentIdentificationSequence",
        "ReferencedSegmentNumber",
        "PixelData",
    }
)

_SR_STRUCTURE = frozenset(
    {
        "ReferencedPerformedProcedureStepSequence",
        "ValueType",
        "ConceptNameCodeSequence",
        "ConceptCodeSequence",
        "ContinuityOfContent",
        "PerformedProcedureCodeSequence",
        "CurrentRequestedProcedureEvidenceSequence",
        "ReferencedSOPSequence",
        "CompletionFlag",
        "VerificationFlag",
        "PreliminaryFlag",
        "ContentTemplateSequence",
        "MappingResource",
        "TemplateIdentifier",
        "ContentSequence",
        "RelationshipType",
        "TextValue",
        "UID",
        "GraphicType",
        "GraphicData",
        "ReferencedFrameOfReferenceUID",
        "MeasuredValueSequence",
        "MeasurementUnitsCodeSequence",
        "NumericValue",
        "FloatingPointValue",
    }
)

SEG_ATTRIBUTES = FROM_SOURCE | _MEDSSL_EQUIPMENT | _SHARED | _SEG_STRUCTURE
SR_ATTRIBUTES = FROM_SOURCE | _MEDSSL_EQUIPMENT | _SHARED | _SR_STRUCTURE


def keep_allowed(dataset: Dataset, allowed: frozenset[str]) -> Dataset:
    """Delete, in place and at every depth, each element whose keyword is not in ``allowed``.

    Private and unknown elements (no keyword) are deleted too. Returns ``dataset``.
    """
    for element in list(dataset):
        if not element.keyword or element.keyword not in allowed:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                keep_allowed(item, allowed)
    return dataset
