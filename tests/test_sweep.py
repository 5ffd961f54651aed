"""Sweeps: failed jobs, one GPU per parallel job, and the joblib, SLURM and Optuna configs.

The joblib and Optuna sweeps run for real on CPU (slow); SLURM is checked as far as a machine
without a cluster allows: the launcher instantiates and submitit writes its sbatch script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from conftest import tiny_overrides
from helpers import run_main
from steelseg import config, sweep

CONF = config.conf_dir()


def run_train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "steelseg.cli.train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def hydra_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=True)


# ----------------------------------------------------------------------------- failed jobs
def test_failed_jobs_are_recorded_and_the_sweep_goes_on(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    # both sizes fail in the job (not multiples of 32); job 1 runs although job 0 failed.
    # In-process (the console script's main, Hydra's basic launcher): no new interpreter.
    sweep_args = ["-m", *tiny_overrides(synth_root), f"hydra.sweep.dir={tmp_path}"]
    code = run_main("steelseg-train", [*sweep_args, "data.height=250,100"], monkeypatch)
    out, err = capsys.readouterr()
    assert code == 1, err[-3000:]  # after the summary: a job failed
    for job, height in ((0, 250), (1, 100)):
        record = json.loads((tmp_path / str(job) / "failed.json").read_text())
        assert record["error_type"] == "ValueError"
        assert record["last_line"].startswith(f"ValueError: data.height={height} must be")
        assert "check_size" in record["traceback_tail"]
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["status"].tolist() == ["failed", "failed"]
    assert "2 of 2 jobs did not end" in out + err

    single = [*tiny_overrides(synth_root), f"hydra.run.dir={tmp_path / 'bad'}", "data.height=250"]
    code = run_main("steelseg-train", single, monkeypatch)  # in-process: quicker
    assert code != 0 and "data.height=250" in capsys.readouterr().err  # a single run fails loudly
    assert not (tmp_path / "bad" / "failed.json").exists()


# ----------------------------------------------------------------------------- one GPU per job
@pytest.fixture
def gpu_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    held: dict = {}
    monkeypatch.setattr(sweep, "_held", held)
    yield tmp_path / "locks"
    for _, f in held.values():
        f.close()


def job_cfg(accelerator: str = "auto", devices=1) -> DictConfig:
    return OmegaConf.create({"trainer": {"accelerator": accelerator, "devices": devices}})


CLAIM_IN_ANOTHER_PROCESS = """
import sys
from omegaconf import OmegaConf
from steelseg import sweep
cfg = OmegaConf.create({"trainer": {"accelerator": "gpu", "devices": 1}})
print(sweep.assign_gpu(cfg, int(sys.argv[2]), sweep.Path(sys.argv[1]), n_gpus=2), flush=True)
sys.stdin.read()  # hold the GPU until the test is done
"""


def test_parallel_jobs_get_a_gpu_each(gpu_locks: Path):
    cfg = job_cfg()
    assert sweep.assign_gpu(cfg, job_num=0, lock_dir=gpu_locks, n_gpus=2) == 0
    assert cfg.trainer.devices == [0]
    again = job_cfg()  # the same worker process keeps its GPU for its next job
    assert sweep.assign_gpu(again, job_num=2, lock_dir=gpu_locks, n_gpus=2) == 0

    others = []
    try:
        for job in (1, 3):  # two more worker processes: one gets GPU 1, the last shares
            p = subprocess.Popen(
                [sys.executable, "-c", CLAIM_IN_ANOTHER_PROCESS, str(gpu_locks), str(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            others.append(p)
            assert p.stdout.readline().strip() == ("1" if job == 1 else str(3 % 2))
    finally:
        for p in others:
            p.communicate("", timeout=60)
    # a worker that ended released its GPU
    late = subprocess.run(
        [sys.executable, "-c", CLAIM_IN_ANOTHER_PROCESS, str(gpu_locks), "4"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("accelerator", "devices", "n_gpus"),
    [("cpu", 1, 4), ("gpu", 2, 4), ("gpu", [3], 4), ("auto", 1, 1), ("auto", 1, 0)],
)
def test_gpu_assignment_leaves_other_jobs_alone(accelerator, devices, n_gpus, gpu_locks):
    cfg = job_cfg(accelerator, devices)
    assert sweep.assign_gpu(cfg, job_num=1, lock_dir=gpu_locks, n_gpus=n_gpus) is None
    assert cfg == job_cfg(accelerator, devices)  # CPU, DDP, chosen devices, <= 1 GPU


@pytest.mark.parametrize(
    ("strategy", "accelerator", "devices", "env", "refused"),
    [
        ("ddp", "cpu", 2, {}, True),
        ("ddp", "gpu", [0, 1], {}, True),
        ("ddp", "gpu", "0,1", {}, True),
        ("ddp", "cpu", 1, {}, False),
        ("ddp", "cpu", "auto", {}, False),
        ("ddp", "gpu", 4, {"SLURM_NTASKS": "4"}, False),  # SLURM starts every process
        ("ddp", "gpu", 4, {"TORCHELASTIC_RUN_ID": "x"}, False),  # so does torchrun
        ("auto", "cpu", 2, {}, False),
    ],
)
def test_relaunching_ddp_is_refused_inside_a_local_multirun(
    strategy, accelerator, devices, env, refused, monkeypatch: pytest.MonkeyPatch
):
    for name in sweep.EXTERNAL_LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = job_cfg(accelerator, devices)
    cfg.trainer.strategy = strategy
    if refused:
        with pytest.raises(ValueError, match="re-run the sweep.*hydra/launcher=slurm"):
            sweep.check_ddp_job(cfg)
    else:
        sweep.check_ddp_job(cfg)


# ----------------------------------------------------------------------------- launcher configs
def test_parallel_launcher_composes_on_joblib():
    cfg = hydra_cfg("hydra/launcher=parallel", "hydra.sweep.dir=/tmp/x")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2 and cfg.hydra.launcher.prefer == "processes"


def test_slurm_launcher_composes_into_an_sbatch_script(tmp_path: Path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = hydra_cfg(
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.job.name=train",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4",
    )
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"
    # what SlurmLauncher.launch gives submitit; submitit only looks for srun on PATH
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m steelseg.cli.train", "0")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--time=720"):
        assert f"#SBATCH {line}" in script
    assert str(tmp_path / ".submitit") in script


# ----------------------------------------------------------------------------- experiment, optuna
def test_compare_arch_encoder_is_four_seed_recipe_jobs():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = hydra_cfg("experiment=compare_arch_encoder")
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [set(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert len(jobs) == 4
    assert {"model=unet", "encoder=efficientnet-b3"} in jobs
    assert {"model=fpn", "encoder=resnext50_32x4d"} in jobs
    seed = hydra_cfg("experiment=seed_baseline")
    for key in ("data", "trainer", "callbacks", "seed", "test_ckpt"):
        assert cfg[key] == seed[key], key  # the seed recipe otherwise
    assert cfg.model == seed.model


def test_optuna_search_space_is_valid():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import (
        CategoricalDistribution,
        LogUniformDistribution,
        UniformDistribution,
    )

    cfg = hydra_cfg("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/iou"
    assert sweeper.storage is None  # optuna 2.10's RDB storage fails with SQLAlchemy 2
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    assert isinstance(space["model.optimizer.lr"], LogUniformDistribution)
    assert isinstance(space["model.threshold"], UniformDistribution)
    assert 0 < space["model.threshold"].low < space["model.threshold"].high < 1
    for group in ("loss", "encoder"):
        assert isinstance(space[group], CategoricalDistribution)
        options = {p.stem for p in (CONF / group).glob("*.yaml")}
        assert set(space[group].choices) <= options, group


# ----------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_parallel_launcher_runs_two_jobs_at_once(synth_root: Path, tmp_path: Path):
    from hydra.utils import instantiate as build

    prepared = tmp_path / "prepared"
    tiny = [*tiny_overrides(synth_root), f"data.prepared_dir={prepared}"]
    build(config.compose(tiny, output_dir=tmp_path / "x").data).prepare_data()  # once, first
    done = run_train(
        [
            "-m",
            *tiny,
            "hydra/launcher=parallel",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "data.height=64,250",
        ]
    )
    assert done.returncode == 1, done.stderr[-3000:]  # job 1 failed, after the summary
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert table["status"].tolist() == ["ok", "failed"]
    assert table["val/iou"][0] >= 0 and "data.height=250" in table["error"][1]


@pytest.mark.slow
def test_optuna_search_tells_failed_trials_and_goes_on(synth_root: Path, tmp_path: Path):
    done = run_train(
        [
            *tiny_overrides(synth_root),
            f"data.prepared_dir={tmp_path / 'prepared'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.seed=41",  # draws threshold 0.5, then 1.5
            "model.threshold=choice(0.5,1.5)",  # 1.5 is refused by the module: a failed trial
        ]
    )
    log = done.stdout + done.stderr
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Failed experiment" in log  # the sweeper told optuna: trial FAILED, then went on
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.threshold"] == 0.5
    assert best["best_params"]["loss"] in {p.stem for p in (CONF / "loss").glob("*.yaml")}
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert table["status"].tolist() == ["ok", "failed"]
    assert "threshold must be in (0, 1)" in table["error"][1]
