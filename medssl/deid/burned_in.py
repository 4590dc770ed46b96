"""Whether pixel data may carry burned-in identifiers, from the header alone.

Header de-identification cannot reach text drawn into the pixels, so ingest quarantines
images flagged here (RejectReason.BURNED_IN) rather than guess. An explicit Burned In
Annotation of YES or Recognizable Visual Features of YES is a risk; an explicit NO is
trusted. When the producer said nothing, the risk is assumed for the kinds of images that
routinely carry screen text, labels or photographs:

- modalities: US, IVUS (measurement overlays, patient banners), XA, RF (fluoroscopy
  banners), ES, XC, GM, SM (endoscopy, photography, microscopy: cameras and slide labels),
  OT, SC, DOC (screenshots, scanned documents), CR, DX, MG, IO, PX (projection
  radiography, where older systems burn in names and dates and BurnedInAnnotation is
  required but often missing);
- Secondary Capture SOP classes, whatever the modality (dose screens, saved reports);
- Image Type containing SCREEN SAVE.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

BURNED_IN_MODALITIES = frozenset(
    {"US", "IVUS", "XA", "RF", "ES", "XC", "GM", "SM", "OT", "SC", "DOC"}
    | {"CR", "DX", "MG", "IO", "PX"}
)
SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)


def burned_in_risk(ds: Dataset) -> bool:
    """True when the pixels of ``ds`` may show identifying text or features."""
    if _flag(ds, "BurnedInAnnotation") == "YES" or _flag(ds, "RecognizableVisualFeatures") == "YES":
        return True
    if _flag(ds, "BurnedInAnnotation") == "NO":
        return False
    modality = _flag(ds, "Modality")
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    screen_save = any(str(v).strip().upper() == "SCREEN SAVE" for v in image_type)
    return modality in BURNED_IN_MODALITIES or sop_class in SECONDARY_CAPTURE_CLASSES or screen_save


def _flag(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()
