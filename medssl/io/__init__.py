"""Readers and writers of medical image files; no store, no de-identification, no torch.

Readers: DICOM series in two passes (:mod:`dicom_scan` headers, then :mod:`dicom_volume`
pixels, grouped by :mod:`dicom_stack`), DICOM SEG, NIfTI-1/2 and NRRD (:mod:`nifti`), the
files behind folder/zip sources (:mod:`sources`) and a DICOMweb source (:mod:`dicomweb`).
All give a canonical :class:`~medssl.io.volume.Volume`: RAS+ voxel order, world affine in mm.
Writers: DICOM SEG (:mod:`seg_writer`) and SR TID 1500 (:mod:`sr_writer`) through highdicom.
"""
