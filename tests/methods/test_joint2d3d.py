"""Joint2D3D: trains through Lightning on a tiny store, exports a 2D and a 3D encoder, DDP-exact."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from medssl.data.joint import JointDataModule
from medssl.data.probe_set import ProbeSet
from medssl.export.cli import export_checkpoint
from medssl.inference.artifact import load_artifact
from medssl.inference.encoder import build_encoder
from medssl.training.online_probe import OnlineProbe
from medssl.transforms import AugmentConfig, BatchAugment, crop_boxes
from medssl.transforms.pipeline import repeat_rows
from tests.data.joint_store import joint_store
from tests.methods import ddp_run
from tests.methods.ddp_cases_joint import JointBatches, fill_queues, tiny_joint
from tests.methods.test_ddp import assert_ddp_equals_single, assert_ranks_equal_single, free_port


def trainer(tmp_path, **kw) -> Trainer:
    args = {
        "accelerator": "cpu",
        "max_steps": 2,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        **kw,
    }
    return Trainer(**args)


def test_steps_on_a_tiny_store_log_every_term_and_change_the_aggregator(tmp_path):
    store = joint_store(tmp_path / "store")
    data = JointDataModule(
        str(store),
        crop_size=(16, 16),
        num_slices=4,
        batch_size=2,
        num_workers=0,
        val_fraction=0.0,
        progress=False,
    )
    model = tiny_joint()
    before = {k: v.clone() for k, v in model.aggregator.state_dict().items()}
    t = trainer(tmp_path)
    t.fit(model, datamodule=data)
    for term in ("intra", "volume", "masked", "total"):
        assert math.isfinite(float(t.callback_metrics[f"train/{term}"]))
    assert any(not torch.equal(before[k], v) for k, v in model.aggregator.state_dict().items())


def test_export_gives_a_2d_encoder_and_a_3d_slice_stack_encoder(tmp_path):
    model = tiny_joint()
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=True)
    t.fit(model, datamodule=JointBatches(2, 1))
    ckpt = tmp_path / "model.ckpt"
    t.save_checkpoint(ckpt)
    artifact = load_artifact(export_checkpoint(ckpt, tmp_path / "artifact", with_plan=False))
    assert artifact.heads == {} and artifact.aggregator["num_slices"] == 4

    encoder2d = build_encoder(artifact)
    image = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(encoder2d(image), model.backbone.eval()(image))

    encoder3d = build_encoder(artifact, volume=True)
    volume = torch.randn(2, 1, 16, 16, 9)
    out = encoder3d(volume)
    assert out.shape == (2, encoder3d.num_features) and encoder3d.spatial_dims == 3
    maps = encoder3d.forward_features(volume)
    assert maps[0].shape[0] == 2 and maps[0].shape[-1] == 4  # the 4 sampled slices stay along z
    stack, positions = encoder3d.slices(volume)
    slice_embeddings = model.backbone(stack.flatten(0, 1)).unflatten(0, (2, 4))
    torch.testing.assert_close(out, model.aggregator.eval()(slice_embeddings, positions)[0])
    with pytest.raises(ValueError, match="expects input"):
        encoder3d(image)


def test_build_encoder_refuses_a_volume_encoder_without_aggregator(tmp_path):
    from medssl.inference.artifact import ArtifactError, save_artifact

    enc = tiny_joint().backbone
    save_artifact(
        tmp_path / "a",
        backbone_name="resenc2d",
        backbone_kwargs=tiny_joint().hparams.backbone_kwargs,
        state_dict=enc.state_dict(),
    )
    with pytest.raises(ArtifactError, match="slice_aggregator"):
        build_encoder(load_artifact(tmp_path / "a"), volume=True)


def test_a_3d_backbone_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="2D backbone"):
        tiny_joint(
            backbone="resenc3d",
            backbone_kwargs={"channels": [4, 8], "blocks_per_stage": [1, 1], "strides": [1, 2]},
        )
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_joint(mask_ratio=1.0)
    model = tiny_joint()
    with pytest.raises(ValueError, match="slices or 'images'|'slices' or 'images'"):
        model.regions_2d({})


def test_slice_masks_and_boxes_depend_on_the_sample_key_not_the_batch():
    model = tiny_joint()
    keys = torch.tensor([5, 9, 11])
    mask = model.slice_mask(keys, 8)
    assert (mask.sum(1) == 2).all()
    torch.testing.assert_close(model.slice_mask(keys[1:], 8), mask[1:])
    boxes = model.keyed_boxes(keys, (16, 16), (0.4, 1.0), 0)
    torch.testing.assert_close(model.keyed_boxes(keys[:1], (16, 16), (0.4, 1.0), 0), boxes[:1])


def test_multi_crop_draws_boxes_and_augmentation_once_per_volume_view():
    """Boxes keyed per region (crop i salted by i); each crop set augmented from the step
    generator right after its boxes are cut, one draw per key: the slices of a volume (one
    key) share it, every image (its own key) draws its own. (Before issue 13 each slice drew
    its own flip, turn and warp, so a view of a volume was a scrambled stack.)"""
    model = tiny_joint(num_local_crops=2)
    regions = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    keys = torch.tensor([7, 7, 7, 2, 1 << 40])
    crops = model.multi_crop(regions, keys, torch.Generator().manual_seed(6))

    generator, expected = torch.Generator().manual_seed(6), []
    unique, inverse = keys.unique(return_inverse=True)
    plan = [((16, 16), (0.4, 1.0))] * 2 + [((8, 8), (0.05, 0.4))] * 2
    for salt, (size, scale) in enumerate(plan):
        boxes = model.keyed_boxes(unique, (16, 16), scale, salt)[inverse][:, None]
        crop = crop_boxes(regions, boxes, size)[:, 0]
        twin = BatchAugment.from_config(AugmentConfig(), size).sample(len(unique), generator)
        expected.append(repeat_rows(twin, inverse)(crop))
    assert all(torch.equal(c, e) for c, e in zip(crops, expected, strict=True))


def test_the_slices_of_a_volume_view_stay_one_stack_and_views_differ():
    """Identical slices stay identical after every spatial and intensity step (noise is per
    voxel, so off here); the two global views of a volume, and two volumes, draw apart."""
    always = {"flip_prob": 1.0, "rot90_prob": 1.0, "affine_prob": 1.0, "intensity_prob": 1.0}
    model = tiny_joint(augment={**always, "gamma_prob": 1.0, "blur_prob": 1.0, "noise_prob": 0.0})
    image = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    slices = image.expand(2, 6, 1, 16, 16)  # two volumes, six identical slices each
    keys = torch.tensor([4, 9]).repeat_interleave(6)
    crops = model.multi_crop(slices.flatten(0, 1), keys, torch.Generator().manual_seed(1))
    for crop in crops:
        stacks = crop.unflatten(0, (2, 6))
        for stack in stacks:
            assert all(torch.equal(stack[0], stack[i]) for i in range(1, 6))
    view_a, view_b = crops[0].unflatten(0, (2, 6)), crops[1].unflatten(0, (2, 6))
    assert not torch.allclose(view_a[0, 0], view_b[0, 0])  # two views of volume 4
    assert not torch.allclose(view_a[0, 0], view_a[1, 0])  # volumes 4 and 9 in one view


def test_the_queues_fill_from_their_start_step_only_below_k_and_change_the_codes(tmp_path):
    """2 volumes (10 regions) a step: the volume queue (K 16) and the 2D queue (K 64) fill from
    step 1 on; with K at most the batch (4 volumes, 20 regions; K 4 and 8) both stay off."""
    queued = {"num_prototypes": 64, "num_volume_prototypes": 16, "queue_start_step": 1}
    model = tiny_joint(**queued, queue_length=100, volume_queue_length=10)
    trainer(tmp_path, max_steps=3).fit(model, datamodule=JointBatches(2, 3))
    assert int(model.queue.filled) == 2 * 10 and int(model.volume_queue.filled) == 2 * 2
    assert {"queue.embeddings", "volume_queue.filled"} <= set(model.state_dict())  # checkpointed
    small_k = tiny_joint(queue_start_step=0)
    trainer(tmp_path, max_steps=2).fit(small_k, datamodule=JointBatches(4, 2))
    assert int(small_k.queue.filled) == 0 and int(small_k.volume_queue.filled) == 0

    losses = []
    for length in (6, 0):
        torch.manual_seed(0)
        model = tiny_joint(**queued, queue_length=length, volume_queue_length=length)
        if length:
            fill_queues(model)
        t = trainer(tmp_path, max_steps=1)
        t.fit(model, datamodule=JointBatches(2, 1))
        losses.append([float(t.callback_metrics[f"train/{k}"]) for k in ("intra", "volume")])
    with_queue, without = losses
    assert all(a != pytest.approx(b) for a, b in zip(with_queue, without, strict=True))


@pytest.mark.timeout(120)  # a rendezvous that never completes fails, not hangs
def test_two_forked_ranks_with_filled_queues_give_the_single_process_step(tmp_path, monkeypatch):
    """Each rank scores its share of the global queue; Sinkhorn's sums over ranks make the
    codes, so the loss and gradients, those of one process on the whole queue and batch."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    for name, devices, strategy in (("single", 1, "ddp"), ("ddp", 2, "ddp_fork")):
        (tmp_path / name).mkdir()
        ddp_run.main(tmp_path / name, devices, "tests.methods.ddp_cases_joint:queue_case", strategy)
    assert_ranks_equal_single(tmp_path)


def test_the_online_probe_runs_on_a_2d_probe_set(tmp_path):
    g = torch.Generator().manual_seed(0)
    probe = ProbeSet(
        torch.randn(8, 1, 16, 16, generator=g),
        torch.tensor([0, 1] * 4),
        torch.arange(8) // 2,
        ("a", "b"),
    )
    probe.save(tmp_path / "probe.safetensors")
    callback = OnlineProbe(str(tmp_path / "probe.safetensors"), every_n_steps=1, linear_steps=5)
    trainer(tmp_path, callbacks=[callback]).fit(tiny_joint(), datamodule=JointBatches(2, 2))
    assert callback.history and all(0.0 <= row["knn_acc"] <= 1.0 for row in callback.history)


@pytest.mark.slow  # two subprocess runs, ~50 s on 2 busy cores
def test_two_gloo_ranks_give_the_single_process_loss_and_gradients(tmp_path):
    assert_ddp_equals_single(tmp_path, "tests.methods.ddp_cases_joint:case")


def test_the_aggregator_sees_slice_positions_and_the_slice_axis_is_kept_in_feature_maps():
    from medssl.backbones.slice_stack import SliceAggregator, SliceStackEncoder

    aggregator = SliceAggregator(16, depth=1, num_heads=4).eval()
    slices = torch.randn(2, 5, 16)
    near, far = torch.linspace(0, 0.2, 5).expand(2, -1), torch.linspace(0, 1, 5).expand(2, -1)
    assert not torch.allclose(aggregator(slices, near)[0], aggregator(slices, far)[0])
    with pytest.raises(ValueError, match="positions"):
        aggregator(slices, near[:, :3])
    encoder = SliceStackEncoder(
        tiny_joint().backbone, aggregator, num_slices=3, slice_axis=0
    ).eval()
    maps = encoder.forward_features(torch.randn(1, 1, 10, 16, 12))
    assert maps[0].shape[2] == 3 and maps[0].shape[1] == encoder.feature_channels[0]
