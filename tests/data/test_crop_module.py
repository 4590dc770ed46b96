"""The base of the pretraining data modules: shared options validated once for all three modules,
one plan resolution (a store of 2D images only plans from its images when asked), one loader
builder (a resumable sampler for training, in order for validation)."""

from __future__ import annotations

import pytest
from torch.utils.data import SequentialSampler

from medssl.data.crop_module import CropDataModule, LoaderOptions
from medssl.data.joint import JointDataModule
from medssl.data.pretrain import PretrainDataModule, PretrainSliceDataModule
from medssl.data.sampler import StepSampler
from medssl.store.plan import PLAN_FILE, Plan, load_or_make_plan
from tests.data.joint_store import joint_store

MODULES = [PretrainDataModule, PretrainSliceDataModule, JointDataModule]
CROPS = {PretrainDataModule: (8, 8, 8), PretrainSliceDataModule: (8, 8), JointDataModule: (8, 8)}
IDS = [m.__name__ for m in MODULES]


@pytest.mark.parametrize("cls", MODULES, ids=IDS)
@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("num_workers", -1)])
def test_every_module_refuses_a_bad_shared_option_naming_it(cls, option, value):
    assert issubclass(cls, CropDataModule)
    with pytest.raises(ValueError, match=rf"^{option} {value}: expected >= "):
        cls("/nonexistent", **{option: value})


@pytest.mark.parametrize("cls", MODULES[:2], ids=IDS[:2])
@pytest.mark.parametrize(("option", "value"), [("views", -1), ("augment_on", "gpu")])
def test_the_crop_modules_refuse_bad_views_and_augment_on_naming_them(cls, option, value):
    with pytest.raises(ValueError, match=rf"^{option} '?{value}'?: expected"):
        cls("/nonexistent", **{option: value})


def test_loader_options_are_frozen_and_validated_on_their_own():
    good = {"batch_size": 2, "num_workers": 0, "val_fraction": 0.1, "seed": 0}
    good |= {"samples_per_epoch": None, "cache_workers": 1, "pin_memory": False}
    good |= {"prefetch_factor": 4, "progress": False}
    options = LoaderOptions(**good)
    with pytest.raises(AttributeError):
        options.batch_size = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="batch_size"):
        LoaderOptions(**{**good, "batch_size": 0})


def test_a_plan_from_the_volumes_or_with_from_images_from_the_2d_images_only(tmp_path):
    images_only = joint_store(tmp_path / "images", volumes=0, images=2)
    with pytest.raises(ValueError, match="no 3D volume"):
        load_or_make_plan(images_only)
    assert not (images_only / PLAN_FILE).is_file()
    plan = load_or_make_plan(images_only, from_images=True)
    assert Plan.load(images_only) == plan and plan.crop_size_2d == plan.crop_size[:2]

    both = joint_store(tmp_path / "both", volumes=2, images=2)
    from_volumes = load_or_make_plan(both, from_images=True)  # volumes win when there are some
    (both / PLAN_FILE).unlink()
    assert load_or_make_plan(both) == from_volumes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = joint_store(tmp_path_factory.mktemp("crop_module") / "store", volumes=4, images=4)
    JointDataModule(str(root), progress=False).prepare_data()  # plan + both caches, once
    return root


@pytest.mark.parametrize("cls", MODULES, ids=IDS)
def test_every_module_serves_a_resumable_training_loader_and_an_ordered_validation_one(cls, store):
    dm = cls(str(store), crop_size=CROPS[cls], batch_size=3, num_workers=0, val_fraction=0.5, progress=False)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == val.batch_size == 3
    assert isinstance(train.sampler, StepSampler) and isinstance(val.sampler, SequentialSampler)
    assert train.num_workers == 0 and not train.persistent_workers
    assert len(next(iter(val))) > 0
