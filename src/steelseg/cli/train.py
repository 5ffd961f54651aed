"""``steelseg-train [overrides] [-m]``: a thin Hydra wrapper around :func:`steelseg.train.run_job`.

Only Hydra and the config folder are imported before Hydra parses the command line, so
``--help`` answers at once; Lightning and torch load when a run starts.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from steelseg.config import conf_dir

DESCRIPTION = """steelseg-train: fit, validate and test a steel-defect segmentation model.

Composes conf/train.yaml with Hydra: pick one option per group (GROUP=OPTION) and set any value
(key=value), e.g.
  steelseg-train experiment=quickstart
  steelseg-train model=fpn encoder=resnext50_32x4d data=severstal data.root=data/severstal
  steelseg-train -m model=unet,fpn encoder=resnext50_32x4d,efficientnet-b3    (a sweep)
  steelseg-train <same overrides> ckpt_path=last                               (resume)
The run folder (outputs/<task>/runs/<time>/) gets checkpoints/, metrics.json, config.yaml and
logs. Exit codes: 0 done; 2 bad input (one line says what); 1 failed (a sweep job failed, or a
Hydra config error).
"""


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from steelseg.train import run_job

    return run_job(cfg)


def main() -> None:
    """Console script ``steelseg-train``."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(DESCRIPTION)
    _hydra_main()


if __name__ == "__main__":
    main()
