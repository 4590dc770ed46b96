"""The budget (medssl.memory.budget): what is available to this process, or what the user says."""

from __future__ import annotations

import pytest
import torch

from medssl.memory.budget import (
    BUDGET_ENV,
    GIB,
    device_budget,
    host_budget,
    override_gb,
    resident_bytes,
)


def test_the_host_budget_counts_what_this_process_holds_already(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    budget = host_budget()
    assert budget.total > resident_bytes() > 0
    assert budget.source in ("MemAvailable", "cgroup limit")


def test_the_environment_and_the_flag_override_the_machine(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1.5")
    assert host_budget().total == int(1.5 * GIB) and host_budget().source == BUDGET_ENV
    assert device_budget(torch.device("cpu")).total == int(1.5 * GIB)
    assert host_budget(4.0).total == 4 * GIB and host_budget(4.0).source == "--memory-budget"


@pytest.mark.parametrize("value", ["lots", "0", "-2"])
def test_a_bad_override_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(BUDGET_ENV, value)
    with pytest.raises(ValueError, match=BUDGET_ENV):
        override_gb()
    with pytest.raises(ValueError, match="--memory-budget"):
        override_gb(0.0)
