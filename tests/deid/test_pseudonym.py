"""Keyed pseudonyms: valid, deterministic, domain-separated, unlinkable across keys."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from medssl.deid import Pseudonymizer
from tests.deid.conftest import KEY_A

_UID = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def test_uid_is_a_valid_2_25_uid(pseudo):
    for value in ["1.2.3", "", "../../etc", "x" * 1000]:
        uid = pseudo.uid(value)
        assert _UID.fullmatch(uid) and len(uid) <= 64 and UID(uid).is_valid


def test_uid_is_deterministic_and_ignores_padding(pseudo):
    assert pseudo.uid("1.2.3") == Pseudonymizer(KEY_A).uid("1.2.3") == pseudo.uid("1.2.3\x00")
    assert pseudo.uid("1.2.3") != pseudo.uid("1.2.4")


def test_outputs_are_pinned_across_machines_and_versions():
    # Changing the scheme would silently unlink every store built with an existing key.
    pseudo = Pseudonymizer(KEY_A)
    assert pseudo.uid("1.2.3") == PINNED_UID
    assert pseudo.token("1234", "patient") == PINNED_TOKEN
    assert pseudo.date_shift_days("1234") == PINNED_SHIFT


def test_different_keys_give_unrelated_outputs(pseudo, other_pseudo):
    assert pseudo.uid("1.2.3") != other_pseudo.uid("1.2.3")
    assert pseudo.token("1234", "patient") != other_pseudo.token("1234", "patient")


def test_token_is_lowercase_hex_of_requested_length(pseudo):
    assert re.fullmatch(r"[0-9a-f]{16}", pseudo.token("x", "patient"))
    assert len(pseudo.token("x", "volume", length=40)) == 40
    with pytest.raises(ValueError):
        pseudo.token("x", "patient", length=0)
    with pytest.raises(ValueError):
        pseudo.token("x", "", length=8)


def test_kinds_are_separate_domains(pseudo):
    assert pseudo.token("42", "patient") != pseudo.token("42", "study")
    assert pseudo.token("42", "patient") != pseudo.uid("42")[5:21]


def test_date_shift_is_nonzero_bounded_and_deterministic(pseudo):
    shifts = [pseudo.date_shift_days(f"patient-{i}", max_days=30) for i in range(500)]
    assert all(s != 0 and -30 <= s <= 30 for s in shifts)
    assert min(shifts) < 0 < max(shifts)
    assert shifts == [pseudo.date_shift_days(f"patient-{i}", max_days=30) for i in range(500)]
    assert {pseudo.date_shift_days(str(i), max_days=1) for i in range(50)} == {-1, 1}
    with pytest.raises(ValueError):
        pseudo.date_shift_days("p", max_days=0)


def test_short_or_non_bytes_key_is_refused():
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")
    with pytest.raises(TypeError):
        Pseudonymizer("a string key of enough length!!!")  # type: ignore[arg-type]


def test_repr_hides_the_key(pseudo):
    assert KEY_A.hex() not in repr(pseudo) and str(KEY_A) not in repr(pseudo)


PINNED_UID = "2.25.177762944382754337418072041335316308254"
PINNED_TOKEN = "1fd8365835b5f4c1"
PINNED_SHIFT = -328
