"""``steelseg-train [overrides] [-m]``: a thin Hydra wrapper around :func:`steelseg.train.run_job`.

``--help`` is answered from the config folder itself, before Hydra is imported (Hydra's own
help composes every group option, seconds on a small machine), so it answers at once; Hydra
parses every other command line, and Lightning and torch load when a run starts.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from steelseg.config import conf_dir

if TYPE_CHECKING:
    from omegaconf import DictConfig

DESCRIPTION = """steelseg-train: fit, validate and test a steel-defect segmentation model.

usage: steelseg-train [GROUP=OPTION ...] [key=value ...] [-m] [--cfg job] [--hydra-help]

Composes conf/train.yaml with Hydra: pick one option per group (GROUP=OPTION) and set any value
(key=value), e.g.
  steelseg-train experiment=quickstart
  steelseg-train model=fpn encoder=resnext50_32x4d data=severstal data.root=data/severstal
  steelseg-train data.crop=256x512 model.classes=4 model.gate=true
                  (native-resolution crops, the 4 classes, an image-level gate head)
  steelseg-train data=folder data.root=plant         (images/ + masks/ of a plant's own data)
  steelseg-train -m model=unet,fpn encoder=resnext50_32x4d,efficientnet-b3    (a sweep)
  steelseg-train <same overrides> ckpt_path=last                               (resume)
  steelseg-train experiment=quickstart --cfg job      (print the composed config, run nothing)
The run folder (outputs/<task>/runs/<time>/) gets checkpoints/, metrics.json, config.yaml and
logs. Hydra's own options (launchers, sweepers, --multirun, --cfg): --hydra-help.
Exit codes: 0 done; 2 bad input (one line says what); 1 failed (a sweep job failed, or a Hydra
config error)."""


def help_text() -> str:
    """:data:`DESCRIPTION` and the options of each config group, read from the config folder."""
    conf = conf_dir()
    lines = [DESCRIPTION, "", "== Configuration groups (GROUP=OPTION) =="]
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        group = folder.relative_to(conf).as_posix()
        if group == "hydra":
            continue  # steelseg's Hydra settings, not a choice
        if group == "hydra/launcher":
            options = ["basic", *options]  # Hydra's own, the default
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def _task(cfg: DictConfig) -> float | None:
    """Hydra's task function: one run, or one job of a sweep."""
    from steelseg.train import USER_ERRORS, run_job

    try:
        return run_job(cfg)
    except USER_ERRORS as e:  # inside Hydra's task function: Hydra would add its own lines
        print(f"steelseg-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """Console script ``steelseg-train``."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        return
    import hydra  # after the --help check: it answers without loading Hydra

    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(_task)()


if __name__ == "__main__":
    main()
