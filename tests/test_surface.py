"""Tests of the defect-free nuisances (steelseg.surface) as the generator draws them."""

from __future__ import annotations

from dataclasses import fields, replace

import cv2
import numpy as np
import pytest

from steelseg import synth
from steelseg.surface import Nuisances

NAMES = [f.name for f in fields(Nuisances) if f.name not in ("edge_both", "rim")]
SEEDS = (1, 2, 3)


def image(nuisances: Nuisances, seed: int, classes: tuple[int, ...] = ()):
    return synth.make_image(np.random.default_rng(seed), nuisances, classes)


@pytest.mark.parametrize("name", NAMES)
def test_each_nuisance_is_drawn_at_probability_one_without_a_mask(name):
    for seed in SEEDS:
        plain, plain_masks = image(Nuisances.none(), seed)
        with_it, masks = image(Nuisances.only(name), seed)
        assert masks == {} and plain_masks == {}  # a clean image stays clean
        change = np.abs(with_it.astype(float) - plain)
        assert change.max() >= 8 and (change >= 3).sum() >= 500, (name, seed, change.max())
        # and the nuisance leaves a defect's mask as it was (the edge only moves where it goes)
        if name != "edge":
            _, plain_masks = image(Nuisances.none(), seed, (3,))
            _, masks = image(Nuisances.only(name), seed, (3,))
            assert plain_masks.keys() == masks.keys() == {3}
            np.testing.assert_array_equal(plain_masks[3], masks[3])


def test_probability_zero_changes_nothing():
    for seed in SEEDS:
        a, _ = image(Nuisances.none(), seed, (1, 3))
        b, _ = image(Nuisances.only("stains", 0.0), seed, (1, 3))
        np.testing.assert_array_equal(a, b)


def test_edge_is_dark_and_keeps_defects_out():
    for seed in SEEDS:
        img, masks = image(Nuisances.only("edge"), seed, (3, 4))
        dark = img < 30
        plain, _ = image(Nuisances.none(), seed)
        assert dark.mean() >= 0.02 > (plain < 30).mean()
        beyond = (img < 30).mean(axis=0) > 0.95  # columns dark over the whole height
        assert beyond.any()
        for mask in masks.values():  # defects keep to the steel
            assert not mask[:, beyond].any()


def test_rim_brightens_the_edge():
    edge = Nuisances.only("edge")
    for seed in SEEDS:
        without, _ = image(edge, seed)
        with_rim, _ = image(replace(edge, rim=1.0), seed)
        brighter = (with_rim.astype(int) - without) > 25
        near_dark = cv2.dilate((without < 30).astype(np.uint8), np.ones((1, 21), np.uint8)) > 0
        assert (brighter & near_dark).sum() >= 100  # a bright line along the edge


def test_specular_streaks_are_bright_columns():
    for seed in SEEDS:
        plain, _ = image(Nuisances.none(), seed)
        shiny, _ = image(Nuisances.only("specular"), seed)
        gain = shiny.astype(float).mean(axis=0) - plain.astype(float).mean(axis=0)
        assert gain.max() > 20  # at least one column much brighter, along the whole height


def test_mill_scale_darkens():
    for seed in SEEDS:
        plain, _ = image(Nuisances.none(), seed)
        scaled, _ = image(Nuisances.only("scale"), seed)
        assert scaled.astype(float).mean() < plain.astype(float).mean()


def test_nuisances_are_validated():
    with pytest.raises(ValueError, match="stains=1.5 is not a probability"):
        Nuisances(stains=1.5)
    with pytest.raises(ValueError, match="unknown nuisance 'rust'; choose from edge"):
        Nuisances.only("rust")
