"""Reproducibility and isolation: same seed, same result; no network unless weights are asked for."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import tiny_overrides
from steelseg import config
from steelseg.model import SteelSegModule, build_network
from steelseg.train import train

TIMING = ("fit_seconds", "train_images_per_s")  # the only metrics allowed to differ


def tiny_run(root: Path, out: Path, prepared: Path, *extra: str) -> tuple[dict, dict]:
    """Two epochs with augmentation (the default), 2 batches each; metrics and final weights."""
    cfg = config.compose(tiny_overrides(root, "trainer.max_epochs=2", *extra), output_dir=out)
    with open_dict(cfg):
        cfg.data.prepared_dir = str(prepared)
    metrics = train(cfg)
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in metrics.items() if k not in TIMING}, state["state_dict"]


def test_two_cpu_runs_with_the_same_seed_are_identical(synth_root, tmp_path):
    prepared = tmp_path / "prepared"
    m1, w1 = tiny_run(synth_root, tmp_path / "a", prepared)
    m2, w2 = tiny_run(synth_root, tmp_path / "b", prepared)
    assert m1 == m2  # exactly: val/*, test/*, epochs
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    m3, w3 = tiny_run(synth_root, tmp_path / "c", prepared, "seed=7", "data.seed=42")
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)  # the seed matters (same split)


def test_augmentation_follows_the_seed(synth_root, tmp_path):
    """albumentations 2 seeds itself from the OS; steelseg reseeds it from torch per sample."""
    from hydra.utils import instantiate

    cfg = config.compose(tiny_overrides(synth_root), output_dir=tmp_path / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.datasets["train"]

    def images(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [ds[i]["image"] for i in range(8)]

    first, again, other = images(0), images(0), images(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


class NetworkUsed(OSError):
    """Raised by the patched sockets; an OSError, so code that handles offline still works."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every attempt to open a connection or resolve a name is recorded and refused."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise NetworkUsed(f"steelseg tried to reach the network: {args[:2]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


def test_no_network_without_pretrained_weights(no_network, synth_root, tmp_path):
    build_network("fpn", "resnet18", None, 1)
    cfg = config.compose(tiny_overrides(synth_root), output_dir=tmp_path / "run")
    with open_dict(cfg):
        cfg.data.prepared_dir = str(tmp_path / "prepared")
    train(cfg)
    module = SteelSegModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    module.eval()(torch.zeros(1, 1, 64, 320, dtype=torch.uint8))
    assert no_network == []


def test_pretrained_weights_are_the_only_reason_to_go_online(no_network):
    """The patch above does catch steelseg's download path (so the test above can fail)."""
    with pytest.raises(ConnectionError, match="must be downloaded from huggingface.co"):
        build_network("fpn", "resnet18", "imagenet", 3)
    assert no_network and no_network[0][0] == ("huggingface.co", 443)
