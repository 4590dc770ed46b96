"""Whole-day shifts of DA and DT values at their own precision."""

from __future__ import annotations

import pytest

from medssl.deid.dates import shift_da, shift_dt


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20040119", -30, "20031220"),
        ("20040229", 1, "20040301"),
        ("2004.01.19", 1, "20040120"),  # ACR-NEMA form
        (" 20040119 ", 0, "20040119"),
        ("2004011", 1, None),
        ("20041340", 1, None),
        ("../../etc", 1, None),
    ],
)
def test_shift_da(value, days, expected):
    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20040119123000.123456", 10, "20040129123000.123456"),
        ("20040119123000+0100", 10, "20040129123000"),  # UTC offset dropped
        ("200401", 40, "200402"),
        ("2004", 400, "2005"),
        ("2004011912", 1, "2004012012"),
        ("200401xx", 1, None),
    ],
)
def test_shift_dt(value, days, expected):
    assert shift_dt(value, days) == expected
