"""steelseg.dataset: the DataModule built from the real config, shrunk to 30 synthetic images.

The data folder is the session's ``synth_root`` (30 images: 24 train, 3 val, 3 test at
64x320); DataModules are instantiated from the composed config, as ``steelseg-train`` does.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import tiny_overrides
from steelseg import config, layouts
from steelseg import prepare as prep
from steelseg.cache import cache_dir
from steelseg.dataset import SteelDataModule, check_size, train_transform

NO_RANDOM_FLIP = {"p_flip": 1.0, "brightness": 0.0, "contrast": 0.0, "shift": 0.0}


def datamodule(cfg: DictConfig, **data: object) -> SteelDataModule:
    """Instantiate ``cfg.data`` with some values replaced."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in data.items():
            cfg.data[key] = value
    dm = instantiate(cfg.data)
    assert isinstance(dm, SteelDataModule)
    return dm


def ready(dm: SteelDataModule) -> SteelDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def shared_cfg(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """conftest's ``tiny_cfg``, for the tests that only read one prepared split (and cache)."""
    tmp = tmp_path_factory.mktemp("dataset")
    cfg = config.compose(tiny_overrides(synth_root), output_dir=tmp / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp / "prepared")
    return cfg


@pytest.fixture
def fresh_cfg(shared_cfg: DictConfig, tmp_path: Path) -> DictConfig:
    """conftest's ``tiny_cfg`` with a private prepared_dir, without composing again (~0.2 s)."""
    cfg = shared_cfg.copy()
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    return cfg


@pytest.fixture(scope="module")
def prepared(shared_cfg: DictConfig) -> SteelDataModule:
    """Prepared, cached and set up; train augmentation as configured."""
    return ready(instantiate(shared_cfg.data))


def split_rows(dm: SteelDataModule) -> pd.DataFrame:
    return pd.read_csv(dm.prepared_dir / "split.csv", dtype=str, keep_default_na=False)


def write_split(path: Path, rows: list[tuple[str, str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"ImageId": [r[0] for r in rows], "split": [r[1] for r in rows], "EncodedPixels": ""}
    ).to_csv(path / "split.csv", index=False)


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_batches_obey_the_tensor_contract(prepared: SteelDataModule, shared_cfg, stage) -> None:
    loader = getattr(prepared, f"{stage}_dataloader")()
    batch = next(iter(loader))
    h, w = shared_cfg.data.height, shared_cfg.data.width
    n = len(batch["image"])
    assert 1 <= n <= shared_cfg.data.batch_size
    assert batch["image"].dtype == torch.uint8
    assert batch["image"].shape == (n, 1, h, w)
    assert batch["mask"].dtype == torch.float32
    assert batch["mask"].shape == (n, 1, h, w)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert isinstance(batch["image_id"], list)
    assert len(batch["image_id"]) == n
    assert all(isinstance(i, str) and i.endswith(".jpg") for i in batch["image_id"])


def test_masks_follow_the_labels(prepared: SteelDataModule) -> None:
    rows = split_rows(prepared).set_index("ImageId")
    seen = {"defect": 0, "clean": 0}
    for ds in prepared.datasets.values():
        for i in range(len(ds)):
            item = ds[i]
            defective = int(rows.loc[item["image_id"], "defect_pixels"]) > 0
            seen["defect" if defective else "clean"] += 1
            assert (item["mask"].sum() > 0) == defective, item["image_id"]
    assert seen["defect"] and seen["clean"]  # both kinds present, so the check means something


def test_splits_are_disjoint_and_cover_split_csv(prepared: SteelDataModule) -> None:
    rows = split_rows(prepared)
    ids = {name: ds.ids for name, ds in prepared.datasets.items()}
    assert set(ids) == {"train", "val", "test"}
    for name, got in ids.items():
        assert got == rows.loc[rows["split"] == name, "ImageId"].tolist(), name
    assert not set(ids["train"]) & set(ids["val"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == set(rows["ImageId"])
    assert {k: len(v) for k, v in ids.items()} == {"train": 24, "val": 3, "test": 3}


# ----------------------------------------------------------------------------- cache
def test_cache_on_and_off_give_identical_eval_batches(
    prepared: SteelDataModule, shared_cfg
) -> None:
    uncached = ready(datamodule(shared_cfg, cache=False))
    assert prepared.datasets["val"].cache is not None  # really read from the cache ...
    assert uncached.datasets["val"].cache is None  # ... and really decoded from JPEG
    assert (cache_dir(prepared.prepared_dir, prepared.size) / "images.npy").exists()
    for stage in ("val", "test"):
        a = list(getattr(prepared, f"{stage}_dataloader")())
        b = list(getattr(uncached, f"{stage}_dataloader")())
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["image_id"] == y["image_id"]
            assert torch.equal(x["image"], y["image"])
            assert torch.equal(x["mask"], y["mask"])


# ----------------------------------------------------------------------------- augmentation
def test_train_augmentation_changes_images_not_eval(prepared: SteelDataModule, shared_cfg) -> None:
    plain = ready(datamodule(shared_cfg, augment=None))
    assert shared_cfg.data.augment is not None
    aug_train, plain_train = prepared.datasets["train"], plain.datasets["train"]
    aug_train.transform.set_random_seed(0)  # reproducible draws
    changed = sum(
        not torch.equal(aug_train[i]["image"], plain_train[i]["image"])
        for i in range(len(aug_train))
    )
    assert changed > 0  # p(no change in 24 images) is about 1e-25 with the configured probs
    for stage in ("val", "test"):
        for a, b in zip(prepared.datasets[stage], plain.datasets[stage]):
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["mask"], b["mask"])


def test_flips_keep_image_and_mask_aligned(prepared: SteelDataModule, shared_cfg) -> None:
    plain = ready(datamodule(shared_cfg, augment=None)).datasets["train"]
    flipped = ready(datamodule(shared_cfg, augment=NO_RANDOM_FLIP)).datasets["train"]
    assert any(plain[i]["mask"].sum() > 0 for i in range(len(plain)))
    for i in range(len(plain)):
        a, b = flipped[i], plain[i]
        assert a["image_id"] == b["image_id"]
        # p_flip=1: both flips, i.e. a half turn; no light change, no shift
        assert torch.equal(a["image"], b["image"].flip(-2, -1))
        assert torch.equal(a["mask"], b["mask"].flip(-2, -1))


def test_every_augmentation_moves_mask_with_image(shared_cfg: DictConfig) -> None:
    # the configured augmentation with larger shifts, on an image that shows its own mask
    augment = OmegaConf.to_container(shared_cfg.data.augment)  # the configured one
    transform = train_transform(**{**augment, "shift": 0.2})
    transform.set_random_seed(0)  # reproducible draws
    mask = np.zeros((64, 320), np.uint8)
    mask[10:40, 30:120] = 1
    image = mask * 200
    moved = 0
    for _ in range(40):
        out = transform(image=image, mask=mask)
        found, want = out["image"] > 80, out["mask"] > 0
        iou = (found & want).sum() / max(1, (found | want).sum())
        assert iou > 0.9
        moved += not np.array_equal(out["mask"], mask)
    assert moved > 0


def test_defect_crop_puts_the_window_on_a_defect() -> None:
    # a 64x64 window of a 64x640 strip with one small defect: anywhere, it misses it about 8
    # times in 10; with defect_crop=1 it always holds it, and a clean strip still crops
    still = dict(p_flip=0, brightness=0, contrast=0, shift=0, crop=(64, 64))
    mask = np.zeros((64, 640), np.uint8)
    mask[20:30, 600:610] = 4
    image = np.full((64, 640), 120, np.uint8)
    hits = {}
    for p in (0.0, 1.0):
        transform = train_transform(**still, defect_crop=p)
        transform.set_random_seed(0)
        hits[p] = sum(transform(image=image, mask=mask)["mask"].any() for _ in range(50))
    assert hits[1.0] == 50 and hits[0.0] < 25
    clean = train_transform(**still, defect_crop=1.0)(image=image, mask=np.zeros_like(mask))
    assert clean["image"].shape == (64, 64) and not clean["mask"].any()
    with pytest.raises(ValueError, match="defect_crop must be a probability"):
        train_transform(**still, defect_crop=1.5)


def test_blackout_removes_one_defect_class_and_its_label() -> None:
    transform = train_transform(p_flip=0, brightness=0, contrast=0, shift=0, blackout=1.0)
    transform.set_random_seed(0)
    image = np.full((64, 64), 120, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[5:20, 5:20], mask[40:60, 40:60] = 3, 1
    for _ in range(10):
        out = transform(image=image, mask=mask)
        (gone,) = {1, 3} - set(np.unique(out["mask"]).tolist())  # exactly one class dropped
        np.testing.assert_array_equal(out["image"][mask == gone], 0)  # blacked out
        np.testing.assert_array_equal(out["image"][mask != gone], 120)  # the rest untouched


# ----------------------------------------------------------------------------- sizes
def test_check_size_suggests_the_neighbours() -> None:
    with pytest.raises(ValueError, match="use 224 or 256") as e:
        check_size(250, 416)
    assert "data.height=250" in str(e.value)
    with pytest.raises(ValueError, match="data.width=250.*use 224 or 256"):
        check_size(256, 250)
    with pytest.raises(ValueError, match="data.height=0"):
        check_size(0, 256)
    check_size(256, 416)  # valid sizes pass


def test_config_size_not_multiple_of_32_fails_at_instantiate(fresh_cfg: DictConfig) -> None:
    fresh_cfg.data.height = 250
    with pytest.raises(InstantiationException, match="use 224 or 256"):
        instantiate(fresh_cfg.data)
    assert not Path(fresh_cfg.data.prepared_dir).exists()


# ----------------------------------------------------------------------------- bad splits
def test_empty_train_split_fails_at_setup(fresh_cfg: DictConfig, synth_root: Path) -> None:
    images = layouts.list_images(synth_root)
    write_split(
        Path(fresh_cfg.data.prepared_dir), [(i, "val") for i in images[:2]] + [(images[2], "test")]
    )
    dm = instantiate(fresh_cfg.data)
    with pytest.raises(ValueError, match="no training images"):
        dm.setup("fit")


def test_empty_val_split_fails_before_any_training(fresh_cfg: DictConfig, synth_root) -> None:
    """A handful of images rounds val to 0: fit says so at setup, not after its first epoch
    (validate and test then stop on an empty loader); testing alone still sets up."""
    images = layouts.list_images(synth_root)
    write_split(Path(fresh_cfg.data.prepared_dir), [(i, "train") for i in images[:4]])
    with pytest.raises(ValueError, match=r"no validation images \(train 4, val 0, test 0\)"):
        instantiate(fresh_cfg.data).setup("fit")
    dm = instantiate(fresh_cfg.data)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 0


def test_split_naming_a_missing_image_fails_at_setup(fresh_cfg: DictConfig, synth_root) -> None:
    images = layouts.list_images(synth_root)
    rows = [(i, "train") for i in images[:4]] + [("0000dead.jpg", "val"), (images[4], "test")]
    write_split(Path(fresh_cfg.data.prepared_dir), rows)
    dm = instantiate(fresh_cfg.data)
    with pytest.raises(ValueError, match="0000dead.jpg"):
        dm.setup("fit")


def test_prepared_dir_made_with_other_parameters(fresh_cfg: DictConfig) -> None:
    datamodule(fresh_cfg, cache=False).prepare_data()
    split_csv = Path(fresh_cfg.data.prepared_dir) / "split.csv"
    before = split_csv.read_bytes()
    datamodule(fresh_cfg, cache=False).prepare_data()  # same parameters: reused
    other = datamodule(fresh_cfg, cache=False, seed=7)
    with pytest.raises(ValueError, match="was made with"):
        other.prepare_data()
    assert split_csv.read_bytes() == before  # refused, not overwritten


def test_split_as_counts_or_fractions_is_the_same_split(fresh_cfg: DictConfig) -> None:
    """``steelseg-prepare`` defaults to 0.8,0.1,0.1 and conf/data/severstal.yaml to
    [800, 100, 100]: training on the folder prepare made must reuse it, not refuse it."""
    n = 20
    datamodule(fresh_cfg, cache=False, n_images=n, split=[0.8, 0.1, 0.1]).prepare_data()
    split_csv = Path(fresh_cfg.data.prepared_dir) / "split.csv"
    before = split_csv.read_bytes()
    datamodule(fresh_cfg, cache=False, n_images=n, split=[16, 2, 2]).prepare_data()
    assert split_csv.read_bytes() == before
    with pytest.raises(ValueError, match="was made with"):  # another split is still refused
        datamodule(fresh_cfg, cache=False, n_images=n, split=[14, 4, 2]).prepare_data()


def test_prepared_dir_for_is_the_data_modules_folder(tmp_path: Path) -> None:
    """A run's ``data`` section -> the folder its DataModule prepares in, where labelled_split
    looks too: with every setting, with settings left out (training's defaults), with
    data.prepared_dir, and in the folder layout (where n_classes counts)."""
    defaults = inspect.signature(SteelDataModule).parameters
    assert {k: defaults[k].default for k in prep.SPLIT_SETTINGS} == prep.SPLIT_SETTINGS
    kaggle, folder = tmp_path / "kaggle", tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    full = {
        "n_images": 40,
        "split": [30, 5, 5],
        "seed": 3,
        "only_defective": True,
        "split_file": None,
        "val_fraction": 0.2,
        "skip_bad": True,
        "n_classes": 2,
    }
    cases = [
        {"root": str(kaggle), **full},
        {"root": str(kaggle)},
        {"root": str(kaggle), "prepared_dir": str(tmp_path / "mine")},
        {"root": str(folder), **full},
        {"root": str(folder), "n_classes": 3},
    ]
    folders = []
    for data in cases:
        dm = SteelDataModule(**data)
        assert prep.prepared_dir_for(data) == dm.prepared_dir, data
        assert prep.prepared_dir_for(data, Path(data["root"])) == dm.prepared_dir, data
        folders.append(dm.prepared_dir)
    assert len(set(folders)) == len(cases)  # every case is a split of its own


def test_root_without_data_says_how_to_get_it(fresh_cfg: DictConfig, tmp_path: Path) -> None:
    dm = datamodule(fresh_cfg, root=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="data=synthetic"):
        dm.prepare_data()


def test_synthetic_data_is_generated_into_an_empty_root(
    fresh_cfg: DictConfig, tmp_path: Path
) -> None:
    root = tmp_path / "generated"
    root.mkdir()
    synthetic = {"n_images": 6, "seed": 0, "n_test": 1}
    dm = ready(datamodule(fresh_cfg, root=str(root), synthetic=synthetic, split=[0.8, 0.1, 0.1]))
    assert (root / "train.csv").exists()
    assert len(layouts.list_images(root)) == 6
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 4, "val": 1, "test": 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 320)


def test_random_crop_trains_on_crops_and_validates_on_whole_images(tiny_cfg) -> None:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    cfg = tiny_cfg.copy()
    with open_dict(cfg):
        cfg.data.augment = {"p_flip": 0.0, "crop": [64, 128]}
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.datasets["train"][0]
    val = dm.datasets["val"][0]
    assert train["image"].shape == train["mask"].shape == (1, 64, 128)
    assert val["image"].shape == (1, 64, 320)
    with pytest.raises(ValueError, match="multiple of 32"):
        from steelseg.dataset import train_transform

        train_transform(crop=(64, 100))
