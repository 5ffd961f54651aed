"""``steelseg-train``: fit, validate and test a model from a Hydra config.

:func:`train` is a plain function (tests and notebooks call it with a config from
:func:`steelseg.config.compose`); :func:`main` is the thin command-line wrapper.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from steelseg.config import conf_dir
from steelseg.prepare import atomic_write_text

log = logging.getLogger(__name__)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but our own validation errors reach the user unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError, RuntimeError)):
            raise e.__cause__ from None
        raise


def build_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a named group (callbacks, loggers); null entries are off."""
    return [build(c) for c in (group or {}).values() if c is not None]


def run_lr_find(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    out: Path,
    apply: bool,
) -> float | None:
    """Lightning's learning-rate range test; saves ``lr_find.png`` and ``lr_find.json``."""
    from pytorch_lightning.tuner import Tuner

    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, attr_name="lr", update_attr=apply
    )
    suggestion = finder.suggestion() if finder is not None else None
    if finder is not None:
        fig = finder.plot(suggest=True)
        fig.savefig(out / "lr_find.png", dpi=100)
        atomic_write_text(
            out / "lr_find.json",
            json.dumps(
                {
                    "suggestion": suggestion,
                    "applied": apply,
                    "lr": finder.results["lr"],
                    "loss": finder.results["loss"],
                },
                indent=1,
            ),
        )
    log.info("lr_find suggests lr=%s (%s)", suggestion, "applied" if apply else "not applied")
    return suggestion


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; write ``metrics.json``.

    Args:
        cfg: A composed ``train`` config (see ``conf/train.yaml``).

    Returns:
        Flat metrics: ``val/*`` and ``test/*`` of the chosen checkpoint, plus ``epochs``,
        ``fit_seconds``, ``params``, ``train_images_per_s``.
    """
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    module = build(cfg.model)
    trainer: pl.Trainer = build(
        cfg.trainer,
        callbacks=build_all(cfg.get("callbacks")),
        logger=build_all(cfg.get("logger")) or False,
    )

    if cfg.get("lr_find"):
        run_lr_find(trainer, module, datamodule, out, bool(cfg.get("lr_find_apply")))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start

    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if ckpt is not None else ""
    which = cfg.get("test_ckpt", "best")
    eval_ckpt = None if which == "current" or (which == "best" and not best_path) else which
    metrics: dict[str, float] = {}
    metrics |= _scalars(
        trainer.validate(module, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False)[0],
        "val/",
    )
    if cfg.get("test", True):
        metrics |= _scalars(
            trainer.test(module, datamodule=datamodule, ckpt_path=eval_ckpt)[0], "test/"
        )
    n_train = len(datamodule.datasets["train"])
    epochs = trainer.current_epoch
    metrics |= {
        "epochs": float(epochs),
        "fit_seconds": round(fit_seconds, 2),
        "params": float(module.num_parameters()),
        "train_images_per_s": round(n_train * max(epochs, 1) / fit_seconds, 2),
    }
    report = {
        "metrics": metrics,
        "checkpoint": {
            "evaluated": eval_ckpt or "current weights",
            "best": best_path,
            "best_val_iou": float(ckpt.best_model_score)
            if ckpt is not None and ckpt.best_model_score is not None
            else None,
        },
        "split_sizes": {k: len(v) for k, v in datamodule.datasets.items()},
    }
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    print_summary(metrics, out)
    return metrics


def print_summary(metrics: dict[str, float], out: Path) -> None:
    """The headline numbers and where the run's files are, as the last lines of a run."""
    rows = [
        (k, metrics[k])
        for k in (
            "val/iou",
            "val/dice",
            "val/dice_per_image",
            "test/iou",
            "test/dice",
            "test/dice_per_image",
        )
        if k in metrics
    ]
    lines = [f"  {k:20s} {v:.4f}" for k, v in rows]
    lines.append(f"  {'epochs':20s} {metrics['epochs']:.0f} in {metrics['fit_seconds']:.0f} s")
    log.info("results (best checkpoint):\n%s\nrun folder: %s", "\n".join(lines), out)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", "val/iou"))


def main() -> None:
    """Console script ``steelseg-train [overrides] [-m]``."""
    _hydra_main()


if __name__ == "__main__":
    main()
