"""Datasets and LightningDataModules: the preprocessing cache, pretraining crops and slices."""

from __future__ import annotations
