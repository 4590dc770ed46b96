"""Shared fixtures: two keys, and real DICOM from pydicom's test data."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset

from medssl.deid import Pseudonymizer

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.fixture
def pseudo() -> Pseudonymizer:
    return Pseudonymizer(KEY_A)


@pytest.fixture
def other_pseudo() -> Pseudonymizer:
    return Pseudonymizer(KEY_B)


def load(name: str) -> FileDataset:
    return pydicom.dcmread(get_testdata_file(name))


@pytest.fixture(params=["CT_small.dcm", "MR_small.dcm"])
def real_ds(request) -> FileDataset:
    return load(request.param)
