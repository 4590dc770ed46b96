"""SwAV's feature queue in training: filled from its start step on, the same global queue on
every DDP rank, checkpointed and resumed exactly."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from medssl.methods.cli import pretrain_main
from tests.methods import test_resume
from tests.methods.synthetic import SyntheticCrops, build
from tests.methods.test_ddp import free_port
from tests.methods.test_methods import fit


@pytest.mark.parametrize(("start", "rows"), [(2, 2), (5, 0)])
def test_the_queue_fills_from_its_start_step_and_not_before(start, rows):
    model = build("swav", queue_length=16, queue_start_step=start)
    fit(model, fast_dev_run=False, max_steps=3)  # steps 0, 1, 2; 2 regions each
    assert int(model.queue.filled) == rows
    assert model.queue.embeddings.shape == (2, 16, 16)  # 2 global crops, length, projection_dim
    assert {"queue.embeddings", "queue.filled"} <= set(model.state_dict())


def test_the_queue_changes_the_codes_once_it_holds_rows():
    """Same weights, same batch: the step-3 loss with a filled queue differs from the one without."""
    torch.manual_seed(0)
    with_queue = build("swav", queue_length=16, queue_start_step=0, freeze_prototypes_steps=10)
    without = build("swav", queue_length=0, freeze_prototypes_steps=10)
    weights = {k: v for k, v in with_queue.state_dict().items() if not k.startswith("queue.")}
    without.load_state_dict(weights, strict=False)
    losses = [
        float(fit(m, fast_dev_run=False, max_steps=3).callback_metrics["train/total"])
        for m in (with_queue, without)
    ]
    assert int(with_queue.queue.filled) == 6 and int(without.queue.filled) == 0
    assert losses[0] != pytest.approx(losses[1], abs=1e-6)


def test_a_run_with_the_queue_resumes_from_its_step_3_checkpoint_to_the_same_losses(
    tmp_path, monkeypatch
):
    """The queue (filled at steps 1-2) comes back from the checkpoint: steps 4-6 score against it."""
    swav = test_resume.MODELS["swav"]
    queued = {
        "class_path": swav["class_path"],
        "init_args": {**swav["init_args"], "queue_length": 6, "queue_start_step": 1},
    }
    monkeypatch.setitem(test_resume.MODELS, "swav_queue", queued)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    assert pretrain_main(["-c", str(test_resume.write_config(whole, "swav_queue"))]) == 0

    config = test_resume.write_config(stopped, "swav_queue")
    crashing = test_resume.with_callback(config, "tests.methods.run_helpers.CrashAtStep", step=3)
    with pytest.raises(RuntimeError, match="crash before step 4"):
        pretrain_main(["-c", str(crashing)])
    checkpoint = next((stopped / "runs").rglob("step=3.ckpt"))
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert int(state["queue.filled"]) == 4  # 2 regions at steps 1 and 2
    assert pretrain_main(["-c", str(config), "--ckpt_path", str(checkpoint)]) == 0
    test_resume.assert_same_losses_after(3, whole, stopped)


class SaveQueue(Callback):
    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.queue.state_dict(), self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs
def test_two_forked_ddp_ranks_hold_one_global_queue_of_both_ranks_embeddings(tmp_path, monkeypatch):
    """Each push all-gathers, so DDP's buffer broadcast from rank 0 loses nothing."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    model = build("swav", queue_length=16, queue_start_step=0)
    Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveQueue(tmp_path)],
    ).fit(model, datamodule=SyntheticCrops(num_batches=6))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert int(ranks[0]["filled"]) == int(ranks[1]["filled"]) == 3 * 2 * 2  # steps x ranks x B
    torch.testing.assert_close(ranks[0]["embeddings"], ranks[1]["embeddings"], rtol=0, atol=0)
    newest = ranks[0]["embeddings"][:, :4]  # the last step: rank 0's 2 regions, then rank 1's
    assert not torch.allclose(newest[:, :2], newest[:, 2:])


def test_local_crops_below_the_backbone_stride_fail_in_one_line_naming_the_setting():
    model = build("swav", local_crop_size=[2, 2, 2])  # the tiny backbone's total stride is 4
    with pytest.raises(ValueError, match=r"SwAV: local crops of \(2, 2, 2\) voxels .* stride 4 .*init_args.local_crop_size"):
        fit(model, fast_dev_run=False, max_steps=1)
