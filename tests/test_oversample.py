"""Class-balanced oversampling (``data.oversample_thr``): images of rare classes are repeated
in the training split by their LVIS repeat factor; val and test stay as they are."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from omegaconf import DictConfig, open_dict

from helpers import data_module
from steelseg.dataset import repeat_factors
from steelseg.train import build


def test_repeat_factors_follow_the_rarest_class() -> None:
    # 10 images: class 3 in 5 (half), class 1 in 2, class 4 in 1, 3 clean
    classes = ["3", "3", "3", "3", "1 3", "1", "4", "", "", ""]
    r = repeat_factors(classes, 0.5)
    # class 3: sqrt(0.5 / 0.5) = 1; class 1: sqrt(0.5 / 0.2) = 1.58 -> 2; class 4: sqrt(5) -> 3
    assert r.tolist() == [1, 1, 1, 1, 2, 2, 3, 1, 1, 1]
    assert repeat_factors(classes, 0.1).tolist() == [1] * 10  # no class that rare
    assert repeat_factors(classes, 1.0)[6] == math.ceil(math.sqrt(10))
    assert repeat_factors(["", ""], 0.5).tolist() == [1, 1]  # clean data: nothing to repeat


def test_oversampling_repeats_rare_training_images_only(tiny_cfg: DictConfig, caplog) -> None:
    plain = data_module(tiny_cfg)
    with caplog.at_level("INFO", logger="steelseg.dataset"):
        over = data_module(tiny_cfg, oversample_thr=1.0)
    assert any("class-balanced oversampling (data.oversample_thr=1)" in m for m in caplog.messages)
    seen = Counter(over.datasets["train"].ids)
    assert set(seen) == set(plain.datasets["train"].ids)  # the same images, some repeated
    classes = {r["ImageId"]: r["classes"] for r in plain.datasets["train"].records}
    expected = repeat_factors(list(classes.values()), 1.0)
    assert [seen[i] for i in classes] == expected.tolist()
    assert max(seen.values()) > 1  # the tiny set has a class rare enough to repeat
    assert all(seen[i] == 1 for i, c in classes.items() if c == "")  # clean images once
    for name in ("val", "test"):
        assert over.datasets[name].ids == plain.datasets[name].ids


@pytest.mark.parametrize("thr", [-0.1, 1.5])
def test_oversample_thr_outside_0_1_is_refused(tiny_cfg: DictConfig, thr: float) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.data.oversample_thr = thr
    with pytest.raises(ValueError, match=r"data.oversample_thr=.* must be in \[0, 1\]"):
        build(tiny_cfg.data)
