"""Method (and export) tests share tiny, deterministic settings: two CPU threads, a fixed seed, quiet Lightning."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> None:
    # one thread: tiny tensors gain nothing from more, and OpenMP threads stall badly when the
    # machine's cores are busy with other work
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore",
        message=".*(does not have many workers|LeafSpec|val_dataloader|log_every_n_steps|litlogger).*",
    )
