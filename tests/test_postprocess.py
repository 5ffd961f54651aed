"""steelseg.postprocess on hand-made arrays: each step, their order, the neutral default, the sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steelseg.postprocess import (
    TTA_CHOICES,
    PostProcess,
    check_tta,
    load_tuned,
    save_tuned,
    sidecar_path,
)


def canvas(h: int = 12, w: int = 16) -> np.ndarray:
    return np.zeros((h, w), dtype=np.float32)


def test_default_is_only_a_threshold_at_half():
    pp = PostProcess()
    assert pp.is_neutral() and PostProcess(threshold=0.3).is_neutral()
    prob = np.random.default_rng(0).random((2, 40, 60), dtype=np.float32)
    np.testing.assert_array_equal(pp.apply(prob), prob >= 0.5)
    assert pp.apply(prob).dtype == bool and pp.apply(prob).shape == prob.shape
    for changed in ({"dilate": 3}, {"close": 3}, {"fill_holes": True}, {"min_total_area": 1}):
        assert not PostProcess(**changed).is_neutral()


def test_threshold_is_inclusive():
    prob = np.array([[0.29, 0.3, 0.31]], dtype=np.float32)
    np.testing.assert_array_equal(PostProcess(threshold=0.3).apply(prob), [[False, True, True]])


def test_close_joins_a_one_pixel_gap():
    p = canvas()
    p[4:8, 2:6] = 1.0
    p[4:8, 7:11] = 1.0  # column 6 is the gap
    assert not PostProcess().apply(p)[5, 6]
    closed = PostProcess(close=3).apply(p)
    assert closed[4:8, 6].all()
    assert closed.sum() == 4 * 9  # closing adds the gap only
    assert not PostProcess(close=1).apply(p)[5, 6]  # a 1x1 kernel changes nothing


def test_dilate_grows_by_half_the_kernel():
    p = canvas()
    p[5, 7] = 1.0
    out = PostProcess(dilate=3).apply(p)
    assert out.sum() == 9 and out[4:7, 6:9].all()
    assert PostProcess(dilate=5).apply(p).sum() == 25


def test_fill_holes_fills_enclosed_background_only():
    p = canvas()
    p[2:9, 2:9] = 1.0
    p[4:7, 4:7] = 0.0  # enclosed hole
    p[0:12, 12] = 1.0
    p[5, 13:16] = 1.0  # the bays right of column 12 stay open to the border
    out = PostProcess(fill_holes=True).apply(p)
    assert out[4:7, 4:7].all()
    assert not out[0:5, 13:16].any() and not out[6:12, 13:16].any()


def test_min_component_area_uses_8_connectivity():
    p = canvas()
    p[1:3, 1:3] = 1.0  # 4 px
    p[6:9, 6:9] = 1.0  # 9 px
    p[0, 14] = p[1, 15] = p[2, 14] = 1.0  # 3 px touching only diagonally: one component
    out = PostProcess(min_component_area=5).apply(p)
    assert out.sum() == 9 and out[6:9, 6:9].all()
    out = PostProcess(min_component_area=3).apply(p)
    assert out.sum() == 4 + 9 + 3


def test_min_total_area_empties_small_masks():
    p = canvas()
    p[1:4, 1:4] = 1.0  # 9 px
    assert PostProcess(min_total_area=10).apply(p).sum() == 0
    assert PostProcess(min_total_area=9).apply(p).sum() == 9


def test_order_dilate_then_fill_then_filter_then_total():
    # A single pixel survives min_component_area=5 only because dilation ran first.
    p = canvas()
    p[5, 5] = 1.0
    assert PostProcess(dilate=3, min_component_area=5).apply(p).sum() == 9
    # A ring with a one-pixel gap: dilation closes it, then hole filling fills the inside.
    ring = canvas(14, 14)
    ring[2:12, 2:12] = 1.0
    ring[3:11, 3:11] = 0.0
    ring[2, 6] = 0.0  # the gap
    assert not PostProcess(fill_holes=True).apply(ring)[6, 6]
    assert PostProcess(dilate=3, fill_holes=True).apply(ring)[6, 6]
    # Closing before hole filling: the gap closes, so the ring's inside is filled.
    assert PostProcess(close=3, fill_holes=True).apply(ring)[6, 6]
    # min_total_area counts what min_component_area left: 4 + 9 = 13 before, 9 after.
    q = canvas()
    q[1:3, 1:3] = 1.0
    q[6:9, 6:9] = 1.0
    assert PostProcess(min_total_area=10).apply(q).sum() == 13
    assert PostProcess(min_component_area=5, min_total_area=10).apply(q).sum() == 0


def test_batch_equals_images_one_by_one():
    rng = np.random.default_rng(1)
    prob = rng.random((3, 32, 48), dtype=np.float32)
    pp = PostProcess(threshold=0.6, min_component_area=3, min_total_area=20, dilate=3, close=3)
    np.testing.assert_array_equal(pp.apply(prob), np.stack([pp.apply(p) for p in prob]))
    assert pp(prob[0]).shape == (32, 48)
    with pytest.raises(ValueError, match="shape"):
        pp.apply(prob[0, 0])


def test_full_size_mask_with_every_step():
    rng = np.random.default_rng(2)
    prob = rng.random((256, 1600), dtype=np.float32) ** 4
    pp = PostProcess(
        0.5, min_component_area=20, min_total_area=100, dilate=3, close=5, fill_holes=True
    )
    out = pp.apply(prob)
    assert out.shape == (256, 1600) and out.dtype == bool
    assert 0 < out.sum() < out.size


def test_dict_round_trip_and_errors():
    pp = PostProcess(0.4, 10, 200, 3, 5, True)
    d = pp.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert PostProcess.from_dict(d) == pp
    assert PostProcess.from_dict({}) == PostProcess()
    assert PostProcess.from_dict({"dilate": 3.0}).dilate == 3  # JSON writers may keep floats
    with pytest.raises(
        ValueError, match=r"unknown postprocess setting\(s\) \['dilation'\].*'dilate'"
    ):
        PostProcess.from_dict({"dilation": 3})
    with pytest.raises(ValueError, match="mapping"):
        PostProcess.from_dict([("threshold", 0.5)])
    bad = [
        {"threshold": 0.0},
        {"threshold": 1.0},
        {"threshold": "0.5"},
        {"min_component_area": -1},
        {"min_total_area": 2.5},
        {"dilate": True},
        {"fill_holes": "yes"},
    ]
    for kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            PostProcess.from_dict(kw)


def test_tta_names():
    assert TTA_CHOICES == ("hflip", "vflip")
    assert check_tta(["vflip", "hflip", "vflip"]) == ("vflip", "hflip")
    assert check_tta("hflip") == ("hflip",)
    with pytest.raises(ValueError, match=r"unknown TTA 'rot90'; choose from \['hflip', 'vflip'\]"):
        check_tta(["rot90"])


def test_tuned_sidecar_round_trip(tmp_path):
    ckpt = tmp_path / "best-epoch003.ckpt"
    assert sidecar_path(ckpt) == tmp_path / "best-epoch003.postprocess.json"
    assert load_tuned(ckpt) is None
    pp = PostProcess(0.35, min_component_area=50, min_total_area=500)
    info = {"split": "val", "score": np.float32(0.75), "grid": {"threshold": [0.3, 0.35]}}
    path = save_tuned(ckpt, pp, ["hflip"], info)
    assert path == sidecar_path(ckpt)
    data = json.loads(path.read_text())
    assert data["postprocess"] == pp.to_dict() and data["tta"] == ["hflip"]
    assert data["split"] == "val" and data["score"] == pytest.approx(0.75)
    assert load_tuned(ckpt) == (pp, ("hflip",))
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temporary file left
    with pytest.raises(ValueError, match="tta"):
        save_tuned(ckpt, pp, [], {"tta": ["vflip"]})
    with pytest.raises(ValueError, match="unknown TTA"):
        save_tuned(ckpt, pp, ["spin"])


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"tta": []}',
        '{"postprocess": {"thresh": 0.5}}',
        '{"postprocess": {}, "tta": ["x"]}',
    ],
)
def test_bad_sidecar_names_the_file(tmp_path, text):
    ckpt = tmp_path / "last.ckpt"
    sidecar_path(ckpt).write_text(text)
    with pytest.raises(ValueError, match=r"last\.postprocess\.json is not a valid tuned"):
        load_tuned(ckpt)
