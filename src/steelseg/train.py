"""Training: fit, validate and test a model from a composed Hydra config.

:func:`train` is a plain function (tests and notebooks call it with a config from
:func:`steelseg.config.compose`); :func:`run_job` adds what one job of a sweep needs; the
``steelseg-train`` command (:mod:`steelseg.cli.train`) is the thin Hydra wrapper around it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from steelseg import checkpoint
from steelseg.io import atomic_write_text, run_folder
from steelseg.metric import HEADLINE

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


def keep_csv_logs(loggers: list[Any]) -> None:
    """Keep a resumed run's earlier CSV log: Lightning's CSVLogger deletes ``metrics.csv``.

    The earlier file becomes ``metrics-1.csv`` (then ``-2``, ...) next to the new one.
    """
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger):
            old = Path(logger.log_dir) / "metrics.csv"
            if old.is_file():
                n = 1
                while (old.parent / f"metrics-{n}.csv").exists():
                    n += 1
                os.replace(old, old.parent / f"metrics-{n}.csv")


#: Errors that mean a bad input, config or environment: ``steelseg-train`` shows them as one line.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; write ``metrics.json``.

    Args:
        cfg: A composed ``train`` config (see ``conf/train.yaml``). ``ckpt_path`` resumes
            a run: a checkpoint file, or ``last`` for the newest ``*/checkpoints/last.ckpt``
            among the run folders next to ``paths.output_dir``. A checkpoint inside a run
            folder (``RUN/checkpoints/``) continues that run: checkpoints, logs and
            ``metrics.json`` go on in ``RUN``. Otherwise ``model.init_from`` starts a new run
            from another run's weights.

    Returns:
        Flat metrics: ``val/*`` and ``test/*`` of the chosen checkpoint, plus ``epochs``,
        ``fit_seconds``, ``params``, ``train_images_per_s``.
    """
    weights_only = not cfg.get("trust_checkpoint", False)
    resume = checkpoint.resolve(cfg.get("ckpt_path"), Path(cfg.paths.output_dir))
    saved = checkpoint.load(resume, "cpu", weights_only) if resume is not None else None
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    module = build(cfg.model)
    if saved is not None:  # refuse a checkpoint that does not fit before writing anything
        check_resumable(saved, module, resume)
        del saved
    elif module.hparams.get("init_from"):  # fine-tuning: another run's weights, heads may differ
        log.info(module.init_weights_from(module.hparams.init_from))
    out = open_run_folder(cfg, resume)
    trainer = build_trainer(cfg, build_loggers(cfg, resume))
    if cfg.get("lr_find"):
        run_lr_find(trainer, module, datamodule, out, bool(cfg.get("lr_find_apply")))

    fit_seconds = fit(trainer, module, datamodule, resume, weights_only)
    eval_ckpt = checkpoint_to_evaluate(trainer, cfg.get("test_ckpt", "best"))
    metrics = validate_and_test(
        trainer, module, datamodule, eval_ckpt, weights_only, cfg.get("test", True)
    )
    metrics |= fit_figures(trainer, module, datamodule, fit_seconds)
    write_metrics(out, metrics, trainer, datamodule, eval_ckpt)
    print_summary(metrics, out)
    return metrics


def check_resumable(saved: dict[str, Any], module: pl.LightningModule, resume: Path) -> None:
    """Raise ``ValueError`` when the checkpoint ``saved`` (read from ``resume``) was not made by
    a module like ``module`` (architecture, classes, weights' shapes)."""
    checkpoint.check_compatible(
        saved.get("hyper_parameters", {}),
        module.hparams,
        saved.get("state_dict", {}),
        module.state_dict(),
        f"checkpoint {resume}",
    )


def open_run_folder(cfg: DictConfig, resume: Path | None) -> Path:
    """Create the run folder and write the resolved ``config.yaml`` into it; returns it.

    A resumed checkpoint inside a run folder continues that run: ``cfg.paths.output_dir``
    becomes that folder, so checkpoints, logs and ``metrics.json`` go on where they were.
    """
    out = Path(cfg.paths.output_dir)
    if resume is not None:
        run = run_folder(resume).resolve()
        if (run / "config.yaml").is_file() and run != out.resolve():
            log.info("resuming %s in its run folder %s", resume, run)
            with open_dict(cfg):
                cfg.paths.output_dir = str(run)
            out = run
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"cannot create the run folder {out} ({e.strerror or e}); choose a writable one "
            "(hydra.run.dir=... on the command line, output_dir= in config.compose)"
        ) from None
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return out


def build_loggers(cfg: DictConfig, resume: Path | None) -> list[Any]:
    """The ``logger`` group; when resuming, first clear the checkpoint folder's half-written
    files and keep the earlier CSV log (see :func:`keep_csv_logs`)."""
    loggers = build_all(cfg.get("logger"))
    if resume is not None:
        checkpoint.remove_temp_files(resume.parent)
        keep_csv_logs(loggers)
    return loggers


def build_trainer(cfg: DictConfig, loggers: list[Any]) -> pl.Trainer:
    """The Trainer with the ``callbacks`` group, ``loggers`` and, unless the config names its
    own plugins, atomic checkpoint writes."""
    plugins = {} if "plugins" in cfg.trainer else {"plugins": [checkpoint.AtomicCheckpointIO()]}
    return build(
        cfg.trainer, callbacks=build_all(cfg.get("callbacks")), logger=loggers or False, **plugins
    )


def fit(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    resume: Path | None,
    weights_only: bool,
) -> float:
    """``trainer.fit``, resumed from ``resume`` when given; returns its wall time in seconds."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=weights_only)
    return time.perf_counter() - start


def checkpoint_to_evaluate(trainer: pl.Trainer, which: str) -> str | None:
    """The checkpoint path ``test_ckpt`` names (``best``: the best one saved, when there is
    one; a path), or None for the weights in memory (``current``, or no best checkpoint)."""
    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if ckpt is not None else ""
    if which == "current" or (which == "best" and not best_path):
        return None
    # the path itself: the last.ckpt callback is a ModelCheckpoint too
    return best_path if which == "best" else which


def validate_and_test(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    ckpt_path: str | None,
    weights_only: bool,
    test: bool,
) -> dict[str, float]:
    """``val/*`` (and with ``test``, ``test/*``) numbers of ``ckpt_path``."""
    metrics = _scalars(
        trainer.validate(
            module,
            datamodule=datamodule,
            ckpt_path=ckpt_path,
            verbose=False,
            weights_only=weights_only,
        )[0],
        "val/",
    )
    if test and not len(datamodule.datasets["test"]):
        log.warning("the split has no test images: no test/* numbers (test=false skips this)")
    elif test:
        metrics |= _scalars(
            trainer.test(
                module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only
            )[0],
            "test/",
        )
    return metrics


def fit_figures(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    fit_seconds: float,
) -> dict[str, float]:
    """``epochs``, ``fit_seconds``, ``params`` and ``train_images_per_s`` of the fit."""
    n_train = len(datamodule.datasets["train"])
    epochs = trainer.current_epoch
    return {
        "epochs": float(epochs),
        "fit_seconds": round(fit_seconds, 2),
        "params": float(module.num_parameters()),
        "train_images_per_s": round(n_train * max(epochs, 1) / fit_seconds, 2),
    }


def write_metrics(
    out: Path,
    metrics: dict[str, float],
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule,
    evaluated: str | None,
) -> None:
    """``out/metrics.json``: the metrics, which checkpoint they are of, and the split sizes."""
    ckpt = trainer.checkpoint_callback
    report = {
        "metrics": metrics,
        "checkpoint": {
            "evaluated": evaluated or "current weights",
            "best": ckpt.best_model_path if ckpt is not None else "",
            "best_val_iou": float(ckpt.best_model_score)
            if ckpt is not None and ckpt.best_model_score is not None
            else None,
        },
        "split_sizes": {k: len(v) for k, v in datamodule.datasets.items()},
    }
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))


def print_summary(metrics: dict[str, float], out: Path) -> None:
    """The headline numbers and where the run's files are, as the last lines of a run."""
    rows = [(k, metrics[k]) for k in HEADLINE if k in metrics]
    lines = [f"  {k:20s} {v:.4f}" for k, v in rows]
    lines.append(f"  {'epochs':20s} {metrics['epochs']:.0f} in {metrics['fit_seconds']:.0f} s")
    log.info("results (best checkpoint):\n%s\nrun folder: %s", "\n".join(lines), out)


def run_job(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun sweep; returns the optimised metric to the sweeper.

    A single run raises (``steelseg-train`` shows :data:`USER_ERRORS`, a bad input, config or
    environment, as one line and exit code 2; anything else with a traceback). A job of a
    multirun that fails writes ``failed.json`` into its folder and
    returns None, so the sweep goes on with the next job and its summary lists the failure;
    hydra-optuna-sweeper tells Optuna such a trial FAILED, which the sampler leaves out (a
    number would mislead it; NaN stops optuna 2.10's sweeper).
    """
    from hydra.core.hydra_config import HydraConfig

    from steelseg import sweep

    metric = cfg.get("optimized_metric", "val/iou")
    if not sweep.in_multirun():
        return train(cfg).get(metric)
    hydra_cfg = HydraConfig.get()
    sweep.assign_gpu(cfg, hydra_cfg.job.num, sweep.lock_dir_for(hydra_cfg.sweep.dir))
    try:
        sweep.check_ddp_job(cfg)
        metrics = train(cfg)
    except Exception as error:
        sweep.record_failure(hydra_cfg.runtime.output_dir, error)
        log.exception("job %s failed; the sweep goes on", hydra_cfg.job.num)
        return None
    return metrics.get(metric)
