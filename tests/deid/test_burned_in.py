"""Burned-in annotation risk from the header."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from medssl.deid import burned_in_risk
from tests.deid.conftest import load


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_explicit_yes_is_a_risk_whatever_the_modality():
    assert burned_in_risk(_ds(Modality="CT", BurnedInAnnotation="YES"))
    assert burned_in_risk(_ds(Modality="MR", RecognizableVisualFeatures="YES"))


def test_explicit_no_is_trusted():
    assert not burned_in_risk(_ds(Modality="US", BurnedInAnnotation="NO"))


@pytest.mark.parametrize("modality", ["US", "XA", "RF", "ES", "SC", "OT", "CR", "DX", "MG", "XC"])
def test_silence_is_a_risk_for_modalities_that_burn_in_text(modality):
    assert burned_in_risk(_ds(Modality=modality))


@pytest.mark.parametrize("modality", ["CT", "MR", "PT", "NM", ""])
def test_silence_is_no_risk_for_tomography(modality):
    assert not burned_in_risk(_ds(Modality=modality))


def test_secondary_capture_and_screen_saves_are_risks_whatever_the_modality():
    assert burned_in_risk(_ds(Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7"))
    assert burned_in_risk(_ds(Modality="CT", ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]))


def test_real_ct_and_mr_are_not_flagged():
    assert not burned_in_risk(load("CT_small.dcm"))
    assert not burned_in_risk(load("MR_small.dcm"))
