"""Every loss test starts from the same random state, so random inputs never make it flaky."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
