"""Heads on an encoder's multi-scale features: segmentation decoders, a detector, a diagnosis classifier.

Pure torch (and MONAI network blocks): never lightning, nibabel or pydicom. A head is built
from a JSON spec (its constructor's keyword arguments), so an artifact can rebuild it.
"""
