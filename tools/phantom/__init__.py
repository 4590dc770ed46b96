"""Seeded, deterministic torso phantoms and the files a hospital would hold for them.

Same arguments and seed → same arrays and byte-identical files. Conventions (see
``tools.phantom.volume``): arrays ``[I, J, K]`` in RAS+ voxel order (i → patient Right,
j → Anterior, k → Superior), ``affine`` voxel → RAS mm; DICOM files use LPS as the
standard requires, with geometry that maps back to the same world points.

    from tools.phantom import make_ct_phantom, write_ct_series
    ph = make_ct_phantom((128, 128, 64), (3.0, 3.0, 4.0), seed=0)
    paths = write_ct_series(ph, "out/ct", transfer_syntax="JPEGLosslessSV1")

Command line: ``python -m tools.phantom --out DIR --kind ct|mr --n-series N --seed S``.
"""

from __future__ import annotations

from tools.phantom.anatomy import make_ct_phantom, make_mr_phantom
from tools.phantom.canvas import ORGAN_LABELS
from tools.phantom.dicom_base import COMPRESSED_SYNTAXES, SUPPORTED_SYNTAXES, UNCOMPRESSED_SYNTAXES
from tools.phantom.dicom_series import write_ct_series, write_mr_series
from tools.phantom.enhanced import write_enhanced_multiframe
from tools.phantom.geometry import NAMED_ORIENTATIONS, SliceGrid, make_slice_grid, sample_on_grid
from tools.phantom.lesions import LESION_KINDS
from tools.phantom.localizer import LOCALIZER_IMAGE_TYPE, scout_grid
from tools.phantom.mosaic import write_mosaic
from tools.phantom.radiograph import lesion_boxes_2d, write_radiograph
from tools.phantom.scanner_quirks import ScannerQuirks
from tools.phantom.volume import RAS_TO_LPS, Lesion, Phantom
from tools.phantom.volume_files import write_nifti, write_nrrd

__all__ = [
    "COMPRESSED_SYNTAXES",
    "LESION_KINDS",
    "LOCALIZER_IMAGE_TYPE",
    "NAMED_ORIENTATIONS",
    "ORGAN_LABELS",
    "RAS_TO_LPS",
    "SUPPORTED_SYNTAXES",
    "ScannerQuirks",
    "UNCOMPRESSED_SYNTAXES",
    "Lesion",
    "Phantom",
    "SliceGrid",
    "lesion_boxes_2d",
    "make_ct_phantom",
    "make_mr_phantom",
    "make_slice_grid",
    "sample_on_grid",
    "scout_grid",
    "write_ct_series",
    "write_enhanced_multiframe",
    "write_mosaic",
    "write_mr_series",
    "write_nifti",
    "write_nrrd",
    "write_radiograph",
]
