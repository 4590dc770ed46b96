"""The pretraining data modules: batch shapes, crop contents, patient split, augmentation placement."""

from __future__ import annotations

import pytest
import torch

from medssl.data.pretrain import PretrainDataModule, PretrainSliceDataModule
from medssl.store.plan import PLAN_FILE, Plan
from medssl.transforms.spatial import crop_box
from tests.data.synthetic_store import mixed_specs, write_store

CROP = (24, 24, 16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = write_store(tmp_path_factory.mktemp("pretrain") / "store", mixed_specs(n_patients=4, per_patient=2))
    PretrainDataModule(str(root), progress=False).prepare_data()  # plan + cache, once for the module
    return root


def module(store, cls=PretrainDataModule, **kwargs):
    args = {"crop_size": CROP, "crops_per_volume": 2, "batch_size": 2, "num_workers": 0, "val_fraction": 0.25, "views": 2, "progress": False}
    args.update(kwargs)
    if cls is PretrainSliceDataModule and args["crop_size"] == CROP:
        args["crop_size"] = (24, 24)
    dm = cls(str(store), **args)
    dm.setup("fit")
    return dm


def test_prepare_data_made_the_plan_and_the_cache(store):
    plan = Plan.load(store)
    assert (store / PLAN_FILE).is_file()
    assert (store / "cache" / plan.hash / "index.json").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_3d_batches_have_the_right_shapes(store, workers):
    dm = module(store, num_workers=workers)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(dm.augment_batch(batch))
        if len(batches) == 2:
            break
    for batch in batches:
        assert batch["image"].shape == (4, 1, *CROP) and batch["image"].dtype == torch.float32
        assert batch["box"].shape == (4, 6) and batch["volume"].shape == (4,)
        assert len(batch["views"]) == 2 and all(v.shape == (4, 1, *CROP) for v in batch["views"])
        assert not torch.equal(batch["views"][0], batch["views"][1])
        assert "seed" not in batch
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (1, *CROP)


@pytest.mark.parametrize("workers", [0, 2])
def test_2d_slice_batches_have_the_right_shapes(store, workers):
    dm = module(store, PretrainSliceDataModule, num_workers=workers, crops_per_volume=3)
    batch = dm.augment_batch(next(iter(dm.train_dataloader())))
    assert batch["image"].shape == (6, 1, 24, 24)
    assert all(v.shape == (6, 1, 24, 24) for v in batch["views"])
    boxes = batch["box"]
    assert ((boxes[:, 5] - boxes[:, 2]) == 1).all()  # one axial slice each
    coronal = module(store, PretrainSliceDataModule, slice_axis=1, crop_size=None)
    assert coronal.train_set.crop_size == tuple(s for a, s in enumerate(Plan.load(store).crop_size) if a != 1)


def test_crops_are_the_cached_voxels_at_their_boxes(store):
    dm = module(store, augment_on="none", views=0)
    batch = dm.augment_batch(next(iter(dm.train_dataloader())))
    for image, box, v in zip(batch["image"], batch["box"].tolist(), batch["volume"].tolist()):
        volume = dm.index.volumes[v]
        expected = crop_box(dm.index.open(volume)[None], box[:3], CROP, volume.pad_value)
        assert torch.equal(image, expected)


def test_train_and_val_never_share_a_patient(store):
    dm = module(store)
    patients = lambda ds: {dm.index.volumes[i].patient for i in ds.volumes}
    assert patients(dm.train_set) and patients(dm.val_set)
    assert not patients(dm.train_set) & patients(dm.val_set)
    seen = {v for b in dm.val_dataloader() for v in b["volume"].tolist()}
    assert {dm.index.volumes[i].patient for i in seen} <= patients(dm.val_set)


def test_validation_crops_are_the_same_every_epoch(store):
    dm = module(store)
    first = [b["image"] for b in dm.val_dataloader()]
    second = [b["image"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_loader_augmentation_arrives_done_and_device_augmentation_waits_for_the_hook(store):
    in_loader = module(store, augment_on="loader", views=0)
    batch = next(iter(in_loader.train_dataloader()))
    assert "seed" not in batch and in_loader.augment_batch(batch) == batch
    on_device = module(store, augment_on="device", views=0)
    raw = next(iter(on_device.train_dataloader()))
    assert isinstance(raw["seed"], int)
    done = on_device.on_after_batch_transfer(raw, 0)
    again = on_device.on_after_batch_transfer(raw, 0)
    assert torch.equal(done["image"], again["image"])  # the seed travels with the batch: reproducible
    assert not torch.equal(done["image"], raw["image"])


def test_a_trainer_runs_the_device_hook(store):
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3)
            self.seen: list[set] = []

        def training_step(self, batch, _):
            self.seen.append(set(batch))
            return sum(self.conv(v).mean() for v in batch["views"])

        def validation_step(self, batch, _):
            self.seen.append(set(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PretrainDataModule(str(store), crop_size=CROP, batch_size=2, num_workers=0, augment_on="device", progress=False)
    probe = Probe()
    pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).fit(probe, datamodule=dm)
    assert len(probe.seen) >= 3
    assert all("views" in keys and "seed" not in keys for keys in probe.seen)


def test_bad_arguments_are_refused(store):
    with pytest.raises(ValueError, match="augment_on"):
        PretrainDataModule(str(store), augment_on="gpu")
    with pytest.raises(ValueError, match="crop_size"):
        module(store, crop_size=(24, 24))
    with pytest.raises(ValueError, match="slice_axis"):
        PretrainSliceDataModule(str(store), slice_axis=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches(store, workers):
    def first(seed):
        dm = module(store, num_workers=workers, seed=seed, augment_on="loader", views=0)
        return next(iter(dm.train_dataloader()))

    a, b, c = first(3), first(3), first(4)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["box"], b["box"])
    assert not torch.equal(a["image"], c["image"])
