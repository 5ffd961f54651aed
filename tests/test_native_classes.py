"""Native-resolution crops (data.crop), per-class targets (model.classes) and the gate head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from steelseg import config, layouts, rle
from steelseg import prepare as prep
from steelseg.cache import cache_dir, load_sample
from steelseg.dataset import parse_crop, targets
from steelseg.metric import dice_per_image, kaggle_dice
from steelseg.model import SteelSegModule
from steelseg.segmetrics import SegMetrics

TINY = dict(
    arch="fpn",
    encoder_name="mobilenet_v2",
    encoder_weights=None,
    in_channels=1,
    arch_kwargs={"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
)


def _data(cfg, *pairs):
    with open_dict(cfg):
        for key, value in pairs:
            node, name = cfg, key.split(".")
            for part in name[:-1]:
                node = node[part]
            node[name[-1]] = value
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ----------------------------------------------------------------------------- crops
@pytest.mark.parametrize("text", ["256x512", "256X512", [256, 512], "256,512"])
def test_parse_crop(text) -> None:
    assert parse_crop(text) == (256, 512)
    assert parse_crop(None) is None


@pytest.mark.parametrize(
    "bad, match",
    [
        ("256x500", "500 is not a positive multiple of 32"),
        ("256", "HEIGHTxWIDTH"),
        ("ax3", "HEIGHTxWIDTH"),
    ],
)
def test_parse_crop_bad(bad, match) -> None:
    with pytest.raises(ValueError, match=match) as e:
        parse_crop(bad)
    assert "\n" not in str(e.value)


def test_crop_trains_on_native_windows_and_validates_whole_strips(tiny_cfg) -> None:
    dm = _data(tiny_cfg, ("data.crop", "64x128"), ("data.augment", None))
    train, val = dm.datasets["train"][0], dm.datasets["val"][0]
    assert train["image"].shape == train["mask"].shape == (1, 64, 128)
    assert val["image"].shape == val["mask"].shape == (1, *rle.SHAPE)  # no resize
    assert dm.cache_size() == rle.SHAPE  # the cache holds full-size images
    assert (cache_dir(dm.prepared_dir, rle.SHAPE) / "images.npy").exists()
    # the window is a piece of the full-resolution image, not of a resized one
    full = layouts.read_split(dm.prepared_dir / "split.csv")
    row = full[full["split"] == "train"].iloc[0]
    image, _ = load_sample(dm.root, row["ImageId"], layouts.row_masks(row), None)
    crop = train["image"][0].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(image, crop.shape)
    assert (windows == crop).all(axis=(2, 3)).any()


def test_crop_taller_than_every_image_follows_the_data(tiny_cfg, caplog) -> None:
    caplog.set_level("INFO", logger="steelseg.dataset")
    dm = _data(tiny_cfg, ("data.crop", "288x512"), ("data.augment", None))
    assert (
        "data.crop=288x512 is larger than every image in height (smallest 256x1600): training "
        "on 256x512 crops" in caplog.text
    )
    assert dm.crop == (288, 512) and dm.train_crop == (256, 512)  # the 256-px strips' height
    assert dm.datasets["train"][0]["image"].shape == (1, 256, 512)
    assert dm.datasets["val"][0]["image"].shape == (1, *rle.SHAPE)  # whole strips


def test_crop_config_gives_a_native_resolution_model() -> None:
    cfg = config.compose(["experiment=quickstart"])  # trains on native 256x416 crops
    assert cfg.data.crop == "256x416" and cfg.model.input_size is None
    squash = ["experiment=quickstart", "data.crop=null", "data.height=128", "data.width=800"]
    assert list(config.compose(squash).model.input_size) == [128, 800]


# ----------------------------------------------------------------------------- classes
def test_targets_one_hot_and_merged() -> None:
    mask = np.array([[0, 1, 3], [4, 0, 3]], np.uint8)
    onehot, label = targets(mask, 4)
    assert onehot.shape == (4, 2, 3) and onehot.dtype == np.float32
    assert onehot[2].tolist() == [[0, 0, 1], [0, 0, 1]]
    assert label.tolist() == [1, 0, 1, 1]
    merged, any_label = targets(mask, 1)
    assert merged[0].tolist() == [[0, 1, 1], [1, 0, 1]] and any_label.tolist() == [1]


def test_four_class_batches_follow_train_csv(tiny_cfg) -> None:
    dm = _data(tiny_cfg, ("model.classes", 4), ("data.crop", "64x128"))
    split = layouts.read_split(dm.prepared_dir / "split.csv")
    ds = dm.datasets["val"]
    for i in range(len(ds)):
        item = ds[i]
        row = split[split["ImageId"] == item["image_id"]].iloc[0]
        assert item["mask"].shape == (4, *rle.SHAPE)
        for c in range(4):
            want = rle.decode(row[f"EncodedPixels_{c + 1}"])
            assert np.array_equal(item["mask"][c].numpy(), want), (item["image_id"], c)
        assert item["label"].tolist() == [float(str(c + 1) in row["classes"]) for c in range(4)]


def test_classes_the_data_does_not_have_are_refused(tiny_cfg, tmp_path) -> None:
    with pytest.raises(
        ValueError,
        match=r"model has 3 classes \(model.classes=3\) but .* has 4 classes; .*model.classes=4",
    ):
        _data(tiny_cfg, ("model.classes", 3))


def test_older_split_without_class_columns_is_prepared_again(tiny_cfg) -> None:
    dm = _data(tiny_cfg)
    meta_path = dm.prepared_dir / "prepare.json"
    import json

    meta = json.loads(meta_path.read_text())
    meta["version"] = 2
    meta_path.write_text(json.dumps(meta))
    again = instantiate(tiny_cfg.data)
    again.prepare_data()
    assert json.loads(meta_path.read_text())["version"] == prep.PREPARE_VERSION


# ----------------------------------------------------------------------------- model
def test_four_classes_and_gate_shapes_any_size() -> None:
    m = SteelSegModule(**TINY, classes=4, gate=True).eval()
    x = torch.randint(0, 255, (2, 1, 70, 100), dtype=torch.uint8)  # not multiples of 32
    with torch.no_grad():
        masks, labels = m(x)
    assert masks.shape == (2, 4, 70, 100) and labels.shape == (2, 4)
    plain = SteelSegModule(**TINY).eval()
    with torch.no_grad():
        assert plain(x).shape == (2, 1, 70, 100)


def test_gate_loss_is_added_to_the_mask_loss() -> None:
    torch.manual_seed(0)
    m = SteelSegModule(**TINY, classes=4, gate=True, gate_weight=0.5, loss={"bce": 1.0})
    m.eval()  # no dropout or batch statistics: both forward passes give the same logits
    batch = {
        "image": torch.randint(0, 255, (2, 1, 64, 64), dtype=torch.uint8),
        "mask": torch.zeros(2, 4, 64, 64),
        "label": torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]),
    }
    total, logits = m._loss(batch)
    masks, image_logits = m(batch["image"])
    mask_loss = torch.nn.functional.binary_cross_entropy_with_logits(masks, batch["mask"])
    gate = torch.nn.functional.binary_cross_entropy_with_logits(image_logits, batch["label"])
    assert total.item() == pytest.approx((mask_loss + 0.5 * gate).item(), rel=1e-5)
    total.backward()
    linear = next(x for x in m.net.classification_head if isinstance(x, torch.nn.Linear))
    assert linear.weight.grad is not None  # the head learns


def test_checkpoint_classes_must_match(tmp_path) -> None:
    from steelseg.checkpoint import check_compatible

    four, one = SteelSegModule(**TINY, classes=4), SteelSegModule(**TINY)
    with pytest.raises(ValueError, match="classes=4.*classes=1"):
        check_compatible(four.hparams, one.hparams, four.state_dict(), one.state_dict())


# ----------------------------------------------------------------------------- metrics
def test_seg_metrics_per_class_and_kaggle() -> None:
    # 2 images x 3 classes; logits +-10 so the threshold is exact
    target = torch.zeros(2, 3, 4, 4)
    target[0, 0, :2] = 1  # image 0, class 1: 8 px
    target[1, 2, 0, 0] = 1  # image 1, class 3: 1 px
    pred = torch.zeros_like(target)
    pred[0, 0, :1] = 1  # half of class 1 found
    pred[1, 1, 3, 3] = 1  # a false class-2 pixel on image 1; class 3 missed
    m = SegMetrics(0.5, classes=3)
    m.update(pred * 20 - 10, target)
    out = {k: float(v) for k, v in m.compute().items()}
    # pairs: (0,1) dice 2*4/(4+8)=2/3; (1,2) 0 (false alarm); (1,3) 0 (missed); 3 empty pairs 1
    assert out["kaggle_dice"] == pytest.approx((2 / 3 + 0 + 0 + 3) / 6)
    assert out["dice_c1"] == pytest.approx(2 / 3) and out["iou_c1"] == pytest.approx(0.5)
    assert out["dice_c2"] == 0 and out["dice_c3"] == 0
    # merged: image 0 dice 2/3; image 1 merged truth 1 px, merged pred another px: 0
    assert out["dice_per_image"] == pytest.approx((2 / 3 + 0) / 2)
    tp = np.array([[4, 0, 0], [0, 0, 0]])
    fp = np.array([[0, 0, 0], [0, 1, 0]])
    fn = np.array([[4, 0, 0], [0, 0, 1]])
    assert kaggle_dice(tp, fp, fn) == pytest.approx(out["kaggle_dice"])
    assert float(np.mean(dice_per_image(tp, fp, fn))) == pytest.approx(out["kaggle_dice"])
