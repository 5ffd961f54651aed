"""What a job of a Hydra multirun does besides training: take its own GPU, record its failure.

``steelseg-train -m ...`` runs every job through :func:`steelseg.train.run_job`, which uses these:

* :func:`assign_gpu`: parallel jobs (``hydra/launcher=parallel``) on a machine with several GPUs
  each take a GPU no other job of the sweep holds. With one GPU or none nothing changes.
* :func:`record_failure`: a job that raises writes ``failed.json`` into its run folder, so the
  sweep summary (:mod:`steelseg.compare`) lists it, and the sweep goes on with the next job.
* :func:`check_ddp_job`: a DDP job that would re-run the command line (and so the sweep) fails
  with a message instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import traceback
from datetime import datetime
from pathlib import Path
from typing import IO

from omegaconf import DictConfig, open_dict

from steelseg.config import GPU_ACCELERATORS
from steelseg.io import atomic_write_text

log = logging.getLogger(__name__)

FAILED_FILE = "failed.json"  # written by record_failure, read by steelseg.compare

#: lock folder -> (GPU index, open lock file): a process keeps its GPU for its whole life
_held: dict[Path, tuple[int, IO[str]]] = {}


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m`` or ``hydra.mode=MULTIRUN``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def lock_dir_for(sweep_dir: str | os.PathLike) -> Path:
    """A folder on this machine (GPUs are per machine) shared by the jobs of one sweep."""
    key = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()  # Windows has no uid
    return Path(tempfile.gettempdir()) / f"steelseg-gpus-{user}" / key


def _claim(n_gpus: int, lock_dir: Path) -> int | None:
    """The GPU this process holds for ``lock_dir``, else the first one no process holds."""
    import fcntl

    if lock_dir in _held:
        return _held[lock_dir][0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in range(n_gpus):
        f = open(lock_dir / f"gpu{gpu}.lock", "w")  # noqa: SIM115 (held open on purpose)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process ends
        except BlockingIOError:
            f.close()
            continue
        _held[lock_dir] = (gpu, f)
        return gpu
    return None


def assign_gpu(
    cfg: DictConfig, job_num: int, lock_dir: Path, n_gpus: int | None = None
) -> int | None:
    """Give a one-device job a GPU of its own on a machine with several.

    The job takes the first GPU whose lock file (in ``lock_dir``) no other process holds and
    keeps it for the life of its process: joblib's worker processes run job after job, so each
    worker stays on its GPU, and a sequential sweep keeps GPU 0 as before. When every GPU is held
    (more parallel jobs than GPUs), the job shares GPU ``job_num % n_gpus``. Jobs that already
    choose their devices (``trainer.devices`` other than 1, or the CPU) are left alone.

    Args:
        cfg: The job's config; ``cfg.trainer.devices`` becomes ``[gpu]``.
        job_num: Hydra's job number (``hydra.job.num``), for the shared fallback.
        lock_dir: One folder per sweep and machine, see :func:`lock_dir_for`.
        n_gpus: Visible GPUs; default ``torch.cuda.device_count()``.

    Returns:
        The GPU index the job will use, or None when nothing changed.
    """
    trainer = cfg.trainer
    if str(trainer.get("accelerator", "auto")) not in GPU_ACCELERATORS:
        return None
    if str(trainer.get("devices", 1)) != "1":
        return None
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        return None
    gpu = _claim(n_gpus, lock_dir) if os.name == "posix" else None
    if gpu is None:
        gpu = job_num % n_gpus
        log.warning(
            "all %d GPUs are held by other jobs; job %d shares GPU %d", n_gpus, job_num, gpu
        )
    with open_dict(cfg):
        cfg.trainer.devices = [gpu]
    log.info("job %d runs on GPU %d of %d", job_num, gpu, n_gpus)
    return gpu


#: environment variables of launchers that start every DDP process themselves (SLURM, torchrun)
EXTERNAL_LAUNCH = ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def _n_devices(trainer: DictConfig) -> int:
    """How many devices Lightning will use for ``trainer.devices`` (count, ids, auto or -1)."""
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int | str):
        return len(devices)  # a list of device ids
    text = str(devices)
    if text not in ("auto", "-1"):
        return len(text.split(",")) if "," in text else int(text)  # "0,1": ids; "2": a count
    if str(trainer.get("accelerator", "auto")) == "cpu":
        return 1 if text == "auto" else os.cpu_count() or 1
    import torch

    return torch.cuda.device_count()


def check_ddp_job(cfg: DictConfig) -> None:
    """Refuse Lightning's ``ddp`` strategy on several devices inside a local multirun.

    That strategy starts its extra processes by running the command line again, which in a
    multirun would run the whole sweep again in each of them. Under SLURM or torchrun, which start
    every process themselves, it is fine.

    Raises:
        ValueError: with the ways to run such jobs.
    """
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy not in ("ddp", "ddp_find_unused_parameters_true"):
        return
    if any(name in os.environ for name in EXTERNAL_LAUNCH) or _n_devices(cfg.trainer) < 2:
        return
    raise ValueError(
        f"trainer.strategy={strategy} on several devices cannot run inside a local multirun: it "
        "re-runs the command line for each extra process, which would re-run the sweep. Run "
        "such jobs as single runs (no -m), or sweep on SLURM with hydra/launcher=slurm "
        "(tasks_per_node = gpus_per_node = trainer.devices)"
    )


def last_line(error: BaseException) -> str:
    """``Type: last line of the message``: what a summary table shows of an error."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1].strip()}" if lines else type(error).__name__


def record_failure(run_dir: str | os.PathLike, error: BaseException) -> Path:
    """Write ``failed.json`` (error type, message, last line, traceback tail) into ``run_dir``.

    Returns:
        The path written.
    """
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    record = {
        "error_type": type(error).__name__,
        "message": str(error),
        "last_line": last_line(error),
        "traceback_tail": tb[-4000:],  # the frames nearest the error
        "time": datetime.now().isoformat(timespec="seconds"),
    }
    path = Path(run_dir) / FAILED_FILE
    atomic_write_text(path, json.dumps(record, indent=2))
    return path
