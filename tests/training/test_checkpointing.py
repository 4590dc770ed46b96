"""Checkpoints a killed run can trust: atomic writes, SIGTERM saves, a last.ckpt that is the last, strict resume paths."""

from __future__ import annotations

import pickle
import signal

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

import medssl.atomic
from medssl.errors import ConfigError
from medssl.training.checkpointing import (
    AtomicCheckpointIO,
    FinalCheckpoint,
    SigtermCheckpoint,
    checkpoint_dir,
    resolve_ckpt_path,
)
from tests.training.tiny import SigtermBeforeStep, TinyData, TinyRegression, quiet_trainer


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("not this one")


def test_atomic_checkpoint_round_trips_and_a_failed_write_keeps_the_previous_file(
    tmp_path, monkeypatch
):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.arange(4.0)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    before = path.read_bytes()

    with pytest.raises(pickle.PicklingError):  # serialising fails: nothing reaches the disk
        io.save_checkpoint({"global_step": 4, "bad": Unpicklable()}, path)

    def killed(*args):  # the process dies between writing the temporary and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(medssl.atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 5, "w": torch.zeros(4)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_atomic_checkpoint_refuses_storage_options(tmp_path):
    with pytest.raises(TypeError, match="takes no storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_resume_path_is_none_or_an_existing_file(tmp_path):
    assert resolve_ckpt_path(None) is None
    ckpt = tmp_path / "step=3.ckpt"
    ckpt.write_bytes(b"x")
    assert resolve_ckpt_path(str(ckpt)) == str(ckpt)
    for keyword in ("last", "best", "hpc", "registry"):
        with pytest.raises(ConfigError, match="give the checkpoint file itself"):
            resolve_ckpt_path(keyword)
    with pytest.raises(
        ConfigError, match="no such checkpoint file; refusing to start from scratch"
    ):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        resolve_ckpt_path(str(tmp_path))  # a folder is not a checkpoint


def test_checkpoint_dir_is_model_checkpoints_dirpath_else_the_run_folder(tmp_path):
    with_dirpath = quiet_trainer(
        default_root_dir=tmp_path,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "mine")],
    )
    assert checkpoint_dir(with_dirpath) == tmp_path / "mine"
    assert checkpoint_dir(quiet_trainer(default_root_dir=tmp_path)) == tmp_path / "checkpoints"


def test_last_ckpt_holds_the_final_step_when_it_was_not_a_save_step(tmp_path):
    saver = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, save_last=True, filename="{step}"
    )
    trainer = quiet_trainer(
        max_steps=6,
        enable_checkpointing=True,
        callbacks=[saver, FinalCheckpoint()],
        plugins=[AtomicCheckpointIO()],
    )
    model = TinyRegression()
    trainer.fit(model, datamodule=TinyData(num_batches=8))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "last.ckpt",
        "step=4.ckpt",
    ]  # no last-v1.ckpt
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    for name, value in model.state_dict().items():
        torch.testing.assert_close(last["state_dict"][name], value, msg=name)


def test_sigterm_finishes_the_batch_saves_it_and_stops(tmp_path):
    handler = signal.getsignal(signal.SIGTERM)
    sigterm = SigtermCheckpoint()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=100)
    trainer = quiet_trainer(
        max_steps=100,
        enable_checkpointing=True,
        callbacks=[SigtermBeforeStep(2), sigterm, saver],
        plugins=[AtomicCheckpointIO()],
    )
    model = TinyRegression()
    with pytest.raises(SIGTERMException):
        trainer.fit(model, datamodule=TinyData(num_batches=50))
    assert signal.getsignal(signal.SIGTERM) == handler
    assert trainer.global_step == 3  # the batch under way when the signal came finished
    assert sigterm.saved == tmp_path / "ckpts" / "sigterm-step=3.ckpt"
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["sigterm-step=3.ckpt"]
    saved = torch.load(sigterm.saved, weights_only=True)
    assert saved["global_step"] == 3
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, msg=name)


def test_no_sigterm_no_checkpoint(tmp_path):
    sigterm = SigtermCheckpoint()
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path, callbacks=[sigterm])
    trainer.fit(TinyRegression(), datamodule=TinyData())
    assert sigterm.saved is None and not list(tmp_path.rglob("*.ckpt"))
