"""Packaging: the configs are found from a source checkout and from an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from steelseg.config import conf_dir

REPO = Path(__file__).resolve().parents[1]


def test_source_checkout_uses_repo_conf():
    assert conf_dir() == REPO / "conf"


def test_wheel_carries_conf_and_composes_from_it(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("steelseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "steelseg/conf/train.yaml" in names and "steelseg/conf/experiment/quickstart.yaml" in names
    )
    assert "steelseg/splits/reference_split.csv" in names and "steelseg/py.typed" in names
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    code = (
        "import steelseg.config as c; print(c.conf_dir()); "
        "cfg = c.compose(['experiment=quickstart'], output_dir='x'); print(cfg.model.arch)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, arch = done.stdout.split()
    assert Path(where) == site / "steelseg" / "conf" and arch == "fpn"
