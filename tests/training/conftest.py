"""Training-plumbing tests run a tiny regression model: one CPU thread, a fixed seed, quiet Lightning."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore",
        message=".*(does not have many workers|LeafSpec|log_every_n_steps|litlogger|val_dataloader).*",
    )
