"""Datasets and LightningDataModules over the preprocessing caches (:mod:`medssl.preprocess`):
pretraining crops and slices, joint 2D/3D, fine-tuning sets, and the online probe's labelled
probe sets (:mod:`medssl.data.probe_set`). Reads memory maps; builds a cache only through its
``build_*``/``ensure_*`` functions."""

from __future__ import annotations
