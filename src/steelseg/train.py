"""Training: fit, validate and test a model from a composed Hydra config.

:func:`train` is a plain function (tests and notebooks call it with a config from
:func:`steelseg.config.compose`); :func:`run_job` adds what one job of a sweep needs; the
``steelseg-train`` command (:mod:`steelseg.cli.train`) is the thin Hydra wrapper around it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from steelseg import checkpoint
from steelseg.config import HEADLINE
from steelseg.io import atomic_write_text

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


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into ``PROG: error: MESSAGE`` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; write ``metrics.json``.

    Args:
        cfg: A composed ``train`` config (see ``conf/train.yaml``). ``ckpt_path`` resumes
            a run: a checkpoint file, or ``last`` for the newest ``*/checkpoints/last.ckpt``
            among the run folders next to ``paths.output_dir``. A checkpoint inside a run
            folder (``RUN/checkpoints/``) continues that run: checkpoints, logs and
            ``metrics.json`` go on in ``RUN``.

    Returns:
        Flat metrics: ``val/*`` and ``test/*`` of the chosen checkpoint, plus ``epochs``,
        ``fit_seconds``, ``params``, ``train_images_per_s``.
    """
    out = Path(cfg.paths.output_dir)
    weights_only = not cfg.get("trust_checkpoint", False)
    resume = checkpoint.resolve(cfg.get("ckpt_path"), out)
    saved = checkpoint.load(resume, "cpu", weights_only) if resume is not None else None
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    module = build(cfg.model)
    if saved is not None:  # refuse a checkpoint that does not fit before writing anything
        state = saved.get("state_dict", {})
        hparams = saved.get("hyper_parameters", {})
        checkpoint.check_compatible(
            hparams, module.hparams, state, module.state_dict(), f"checkpoint {resume}"
        )
        del saved, state
        run = checkpoint.run_folder(resume).resolve()
        if (run / "config.yaml").is_file() and run != out.resolve():
            log.info("resuming %s in its run folder %s", resume, run)
            with open_dict(cfg):  # checkpoints, logs and metrics.json continue where they were
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
    loggers = build_all(cfg.get("logger"))
    if resume is not None:
        checkpoint.remove_temp_files(resume.parent)
        keep_csv_logs(loggers)
    trainer: pl.Trainer = build(
        cfg.trainer,
        callbacks=build_all(cfg.get("callbacks")),
        logger=loggers or False,
        **({} if "plugins" in cfg.trainer else {"plugins": [checkpoint.AtomicCheckpointIO()]}),
    )

    if cfg.get("lr_find"):
        run_lr_find(trainer, module, datamodule, out, bool(cfg.get("lr_find_apply")))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=weights_only)
    fit_seconds = time.perf_counter() - start

    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if ckpt is not None else ""
    which = cfg.get("test_ckpt", "best")
    eval_ckpt = None if which == "current" or (which == "best" and not best_path) else which
    if eval_ckpt == "best":  # the path itself: the last.ckpt callback is a ModelCheckpoint too
        eval_ckpt = best_path
    metrics: dict[str, float] = {}
    metrics |= _scalars(
        trainer.validate(
            module,
            datamodule=datamodule,
            ckpt_path=eval_ckpt,
            verbose=False,
            weights_only=weights_only,
        )[0],
        "val/",
    )
    if cfg.get("test", True):
        metrics |= _scalars(
            trainer.test(
                module, datamodule=datamodule, ckpt_path=eval_ckpt, weights_only=weights_only
            )[0],
            "test/",
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
    rows = [(k, metrics[k]) for k in HEADLINE if k in metrics]
    lines = [f"  {k:20s} {v:.4f}" for k, v in rows]
    lines.append(f"  {'epochs':20s} {metrics['epochs']:.0f} in {metrics['fit_seconds']:.0f} s")
    log.info("results (best checkpoint):\n%s\nrun folder: %s", "\n".join(lines), out)


def run_job(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun sweep; returns the optimised metric to the sweeper.

    A single run fails loudly: a bad input, config or environment (:data:`USER_ERRORS`)
    as one line ``steelseg-train: error: ...`` and exit code 2, anything else with a
    traceback. A job of a multirun that fails writes ``failed.json`` into its folder and
    returns None, so the sweep goes on with the next job and its summary lists the failure;
    hydra-optuna-sweeper tells Optuna such a trial FAILED, which the sampler leaves out (a
    number would mislead it; NaN stops optuna 2.10's sweeper).
    """
    from hydra.core.hydra_config import HydraConfig

    from steelseg import sweep

    metric = cfg.get("optimized_metric", "val/iou")
    if not sweep.in_multirun():
        with exit_on_user_error("steelseg-train"):
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
