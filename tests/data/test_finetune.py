"""The fine-tuning data module: batches per task, oversampling, label fractions, split, resume, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medssl.data.finetune import FinetuneDataModule
from medssl.data.finetune_cases import labelled_subset
from medssl.preprocess.geometry import world_to_voxel_boxes
from medssl.transforms.pipeline import AugmentConfig
from tests.data.labelled_store import (
    LESION_VALUES,
    default_cases,
    lesion_phantoms,
    store_affine,
    write_labelled_store,
)
from tests.data.synthetic_store import mixed_specs, write_store

CROP = [24, 24, 16]
LESIONS = [f"lesion_{k}" for k in LESION_VALUES]
ONLY_GEOMETRY = AugmentConfig(flip_prob=0.5, rot90_prob=0.7, affine_prob=0.0, intensity_prob=0.0, gamma_prob=0.0, noise_prob=0.0, blur_prob=0.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = write_labelled_store(tmp_path_factory.mktemp("finetune") / "store")
    FinetuneDataModule(str(root), progress=False).prepare_data()
    return root


def module(store, task="segmentation", **kwargs):
    args = {"crop_size": CROP, "batch_size": 2, "num_workers": 0, "progress": False}
    args.update(kwargs)
    dm = FinetuneDataModule(str(store), task, **args)
    dm.setup("fit")
    return dm


def batches(dm, n, augment=True):
    out = []
    for batch in dm.train_dataloader():
        out.append(dm.augment_batch(batch) if augment else batch)
        if len(out) == n:
            return out


def test_segmentation_batches_and_classes(store):
    dm = module(store, structures=["liver", "lesion_hypodense", "heart"])
    assert dm.class_names == ["background", "heart", "liver", "lesion_hypodense"] and dm.num_classes == 4
    assert dm.class_values == [0, 5, 6, 21] and dm.modalities == ["CT"]  # the masks' values
    batch = batches(dm, 1)[0]
    assert batch["image"].shape == (2, 1, *CROP) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, *CROP) and batch["label"].dtype == torch.int64
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3} and "seed" not in batch
    val = list(dm.val_dataloader())
    assert [b["volume_id"] for b in val] == [[v] for v in dm.val_cases]
    for b in val:
        assert b["image"].shape[:2] == (1, 1) and b["label"].shape == (1, *b["image"].shape[2:])
        assert b["spacing"].shape == (1, 3)


def test_crops_read_the_cached_voxels_and_their_labels(store):
    dm = module(store, structures=["liver"], augment=False)
    ds = dm.train_set
    i = ds.volumes[0]
    start = [3, 5, 7]
    image, label = ds.read_image(i, start), ds.read_label(i, start)
    cached = np.asarray(dm.index.open(dm.index.volumes[i]), dtype=np.float32)
    raw = np.asarray(dm.labels.open(dm.labels.entries[dm.index.volumes[i].volume_id]))
    window = tuple(slice(s, s + n) for s, n in zip(start, CROP))
    assert np.array_equal(image[0].numpy(), cached[window])
    assert np.array_equal(label.numpy(), (raw[window] == 6).astype(np.int64))


def test_augmentation_keeps_every_structure_under_its_intensity(store):
    dm = module(store, structures=["lung_right", "liver", "vertebrae"], augment_config=ONLY_GEOMETRY, foreground_oversample=1.0)
    for raw in batches(dm, 3, augment=False):
        out = dm.augment_batch(raw)
        assert not torch.equal(out["image"], raw["image"])  # something moved
        for b in range(raw["image"].shape[0]):
            for c in range(4):  # flips and quarter turns permute voxels: the same values under each class
                before = raw["image"][b, 0][raw["label"][b] == c].sort().values
                after = out["image"][b, 0][out["label"][b] == c].sort().values
                assert torch.equal(before, after)


def test_full_augmentation_keeps_lungs_darker_than_liver(store):
    dm = module(store, structures=["lung_right", "liver"], foreground_oversample=1.0, samples_per_epoch=8, batch_size=4)
    checked = 0
    for batch in batches(dm, 2):  # affine warps (nearest for labels), gamma, noise, blur included
        lung, liver = batch["image"][:, 0][batch["label"] == 1], batch["image"][:, 0][batch["label"] == 2]
        if len(lung) > 20 and len(liver) > 20:
            assert lung.mean() < liver.mean() - 1.0
            checked += 1
    assert checked


def test_foreground_oversampling_reaches_its_share(store):
    share = 0.5
    dm = module(store, structures=LESIONS, crop_size=[16, 16, 16], foreground_oversample=share, samples_per_epoch=40, augment=False)
    with_lesion = [bool(dm.train_set[k]["label"].any()) for k in range(40)]
    assert sum(with_lesion) / 40 >= share
    none = module(store, structures=LESIONS, crop_size=[16, 16, 16], foreground_oversample=0.0, samples_per_epoch=40, augment=False)
    assert sum(bool(none.train_set[k]["label"].any()) for k in range(40)) < sum(with_lesion)


def test_train_and_val_never_share_a_patient(store):
    dm = module(store, val_fraction=0.4)
    patient = {v.volume_id: v.patient for v in dm.index.volumes}
    train, val = {patient[v] for v in dm.train_cases}, {patient[v] for v in dm.val_cases}
    assert train and val and not train & val
    assert sorted(dm.train_cases + dm.val_cases) == [f"v{i:03d}" for i in range(6)]
    assert module(store, val_fraction=0.4).val_cases == dm.val_cases  # deterministic


def test_label_fractions_nest_and_keep_at_least_one_case():
    ids = [f"case{i:03d}" for i in range(200)]
    small, medium, large = (set(labelled_subset(ids, f, seed=3)) for f in (0.05, 0.1, 0.5))
    assert len(small) == 10 and len(medium) == 20 and len(large) == 100
    assert small <= medium <= large
    assert set(labelled_subset(ids, 0.05, seed=4)) != small
    assert len(labelled_subset(ids[:3], 0.01)) == 1
    with pytest.raises(ValueError, match="label_fraction"):
        labelled_subset(ids, 0.0)


def test_the_module_takes_a_nested_fraction_of_training_cases_only(store):
    full = module(store, val_fraction=0.2)
    part = module(store, val_fraction=0.2, label_fraction=0.4, fraction_seed=1)
    assert len(part.train_cases) == 2 and set(part.train_cases) <= set(full.train_cases)
    assert part.val_cases == full.val_cases
    assert set(module(store, val_fraction=0.2, label_fraction=0.2, fraction_seed=1).train_cases) <= set(part.train_cases)


def expected_lesion_boxes(dm, volume_id):
    """The phantom's lesion boxes (store voxels) → world mm → cached voxels of ``volume_id``."""
    i = int(volume_id[1:])
    case, phantom = default_cases()[i], lesion_phantoms()[i]
    affine = store_affine(case)
    lo = np.array([(affine @ np.append(np.array(les.bbox[:3]) - 0.5, 1.0))[:3] for les in phantom.lesions])
    hi = np.array([(affine @ np.append(np.array(les.bbox[3:]) - 0.5, 1.0))[:3] for les in phantom.lesions])
    return world_to_voxel_boxes(lo, hi, np.asarray(dm.labels.entries[volume_id].affine))


def test_detection_targets_are_the_phantom_lesions_inside_the_crop(store):
    dm = module(store, "detection", foreground_oversample=1.0, augment=False, samples_per_epoch=10)
    assert dm.class_names == LESIONS and dm.class_values == sorted(LESION_VALUES.values())
    ds = dm.train_set
    for k in range(10):
        item = ds[k]
        boxes = item["boxes"]
        assert len(boxes) >= 1 and boxes.shape[1] == 6 and item["labels"].dtype == torch.int64
        assert (boxes[:, :3] >= 0).all() and (boxes[:, 3:] <= torch.tensor(CROP)).all() and (boxes[:, 3:] > boxes[:, :3]).all()
    for volume_id in dm.train_cases:  # a crop at a known start: targets = converted phantom boxes, shifted and clipped
        i = next(j for j, v in enumerate(dm.index.volumes) if v.volume_id == volume_id)
        expected = expected_lesion_boxes(dm, volume_id)
        start = [int(v) for v in expected[0, :3] - 4]
        boxes, labels = ds.targets(i, start)
        assert len(boxes) == 1 and LESIONS[int(labels[0])] == f"lesion_{lesion_phantoms()[i].lesions[0].kind}"
        shifted = np.clip(expected[0] - np.array(start * 2), 0, CROP * 2)
        assert np.allclose(boxes[0].numpy(), shifted, atol=1.0)


def test_detection_validation_gives_whole_volumes_with_their_boxes(store):
    dm = module(store, "detection")
    for batch in dm.val_dataloader():
        (target,) = batch["targets"]
        assert np.allclose(target["boxes"].numpy(), expected_lesion_boxes(dm, batch["volume_id"][0]), atol=1.0)
        assert batch["image"].shape[:2] == (1, 1)


def test_merged_detection_is_one_class_with_every_kinds_boxes(store):
    by_kind = module(store, "detection")
    merged = module(store, "detection", merge_as="lesion")
    assert merged.class_names == ["lesion"] and merged.class_values is None
    for k, (boxes, classes) in merged.train_set.case_boxes.items():
        kept, kinds = by_kind.train_set.case_boxes[k]
        assert np.array_equal(boxes, kept) and len(classes) == len(kinds) and not classes.any()
    with pytest.raises(ValueError, match="merge_as.*detection only"):
        module(store, "segmentation", merge_as="lesion")
    with pytest.raises(ValueError, match="merge_as"):
        module(store, "detection", merge_as=" ")


def test_detection_batches_collate_lists_of_targets(store):
    batch = batches(module(store, "detection", batch_size=3, samples_per_epoch=6), 1)[0]
    assert batch["image"].shape == (3, 1, *CROP) and len(batch["targets"]) == 3
    assert all(set(t) == {"boxes", "labels"} and t["boxes"].shape[1] == 6 for t in batch["targets"])


def test_classification_targets_are_the_case_classes(store):
    dm = module(store, "classification", augment=False, samples_per_epoch=12)
    assert dm.class_names == ["calcification", "liver_lesion", "nodule"] and not dm.multi_label
    kinds = {f"v{i:03d}": ph.lesions[0].kind for i, ph in enumerate(lesion_phantoms())}
    names = {"solid_nodule": "nodule", "hypodense": "liver_lesion", "calcified": "calcification"}
    for k in range(12):
        item = dm.train_set[k]
        assert item["image"].shape == (1, *CROP)
        assert dm.class_names[int(item["target"])] == names[kinds[dm.index.volumes[item["volume"]].volume_id]]
    val = [b for b in dm.val_dataloader()]
    assert all("seed" not in b for b in val)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(val, dm.val_dataloader()))


def test_several_classes_make_it_multi_label(tmp_path):
    classes = [["nodule"], ["nodule", "liver_lesion"], [], ["liver_lesion"], ["calcification"], ["nodule"]]
    root = write_labelled_store(tmp_path / "store", classes=classes)
    dm = FinetuneDataModule(str(root), "classification", crop_size=CROP, num_workers=0, progress=False, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.multi_label
    for k in range(6):
        item = dm.train_set[k]
        expected = classes[int(dm.index.volumes[item["volume"]].volume_id[1:])]
        assert item["target"].dtype == torch.float32 and item["target"].shape == (3,)
        assert [dm.class_names[c] for c in item["target"].nonzero()[:, 0].tolist()] == sorted(expected)


def test_2d_slices(store):
    seg = module(store, spatial_dims=2, crop_size=[24, 24], structures=["liver"])
    batch = batches(seg, 1)[0]
    assert batch["image"].shape == (2, 1, 24, 24) and batch["label"].shape == (2, 24, 24)
    det = module(store, "detection", spatial_dims=2, crop_size=[24, 24], foreground_oversample=1.0)
    batch = batches(det, 1)[0]
    assert all(t["boxes"].shape[1] == 4 for t in batch["targets"])
    assert sum(len(t["boxes"]) for t in batch["targets"]) >= 1


def test_a_resumed_run_sees_the_same_batches(store):
    def run(step, n):
        dm = module(store, samples_per_epoch=5)
        dm.trainer = SimpleNamespace(global_step=step, accumulate_grad_batches=1, global_rank=0, world_size=1)
        return batches(dm, n)

    straight, resumed = run(0, 5), run(3, 2)
    for a, b in zip(straight[3:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["volume"], b["volume"])


def test_worker_processes_give_the_same_batches(store):
    a = batches(module(store, num_workers=0), 2)
    b = batches(module(store, num_workers=2), 2)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))


def test_a_store_without_labels_is_refused_by_name(tmp_path):
    root = write_store(tmp_path / "plain", mixed_specs(2, 1))
    with pytest.raises(ValueError, match=rf"store {root}: no labels"):  # at once: before any cache is built
        FinetuneDataModule(str(root), "segmentation", num_workers=0, progress=False)


def test_bad_arguments_are_refused(store):
    with pytest.raises(ValueError, match=r"structures \['spleeen'\].*known structures: \[.*'spleen'"):
        module(store, structures=["spleeen"])
    with pytest.raises(ValueError, match="task 'registration'"):
        FinetuneDataModule(str(store), "registration")
    with pytest.raises(ValueError, match="label_fraction"):
        FinetuneDataModule(str(store), label_fraction=0.0)
    with pytest.raises(ValueError, match="crop_size"):
        FinetuneDataModule(str(store), crop_size=[24, 24])
    with pytest.raises(ValueError, match="foreground_oversample"):
        module(store, foreground_oversample=1.5)
    with pytest.raises(ValueError, match="spatial_dims"):
        FinetuneDataModule(str(store), spatial_dims=4)


def test_a_trainer_runs_the_device_hook(store):
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3)
            self.seen: list[set] = []

        def training_step(self, batch, _):
            self.seen.append(set(batch))
            return self.conv(batch["image"]).mean()

        def validation_step(self, batch, _):
            self.seen.append(set(batch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = FinetuneDataModule(str(store), "segmentation", crop_size=CROP, num_workers=0, progress=False)
    probe = Probe()
    pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).fit(probe, datamodule=dm)
    assert len(probe.seen) >= 3 and all("seed" not in keys and "label" in keys for keys in probe.seen)
