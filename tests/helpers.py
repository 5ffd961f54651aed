"""Small shared test utilities: tiny Kaggle-layout folders written fast.

A Kaggle-layout folder is ``train.csv`` (2019 layout ``ImageId_ClassId,EncodedPixels`` or the
current layout ``ImageId,ClassId,EncodedPixels``) plus ``train_images/*.jpg`` (1600x256 grey).
Images are constant grey JPEGs; the encoded bytes of each grey level are made once per process.
"""

from __future__ import annotations

import csv
import functools
import importlib
import importlib.metadata
import logging
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

SHAPE = (256, 1600)  # (height, width) of a Severstal image

# Labels of one image: {ClassId: RLE string} ({} = defect-free).
Labels = Mapping[int, str]


@functools.cache
def jpeg_bytes(grey: int = 128, shape: tuple[int, int] = SHAPE) -> bytes:
    """JPEG bytes of a constant grey image of ``shape`` (height, width); decodes exactly."""
    ok, buf = cv2.imencode(".jpg", np.full(shape, grey, dtype=np.uint8))
    assert ok
    return buf.tobytes()


def write_image(path: Path, grey: int = 128, shape: tuple[int, int] = SHAPE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(grey, shape))
    return path


def write_train_csv(path: Path, labels: Mapping[str, Labels], layout: str = "current") -> Path:
    """Write ``labels`` ({ImageId: {ClassId: RLE}}) as a train.csv in ``layout``.

    ``"2019"``: four rows per image (empty EncodedPixels for absent classes), every image listed.
    ``"current"``: defect rows only (defect-free images do not appear).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if layout == "2019":
            w.writerow(["ImageId_ClassId", "EncodedPixels"])
            for iid, by_class in labels.items():
                for c in range(1, 5):
                    w.writerow([f"{iid}_{c}", by_class.get(c, "")])
        elif layout == "current":
            w.writerow(["ImageId", "ClassId", "EncodedPixels"])
            for iid, by_class in labels.items():
                for c, s in sorted(by_class.items()):
                    w.writerow([iid, c, s])
        else:
            raise ValueError(layout)
    return path


def write_kaggle(
    root: Path,
    labels: Mapping[str, Labels],
    layout: str = "current",
    greys: Mapping[str, int] | None = None,
) -> Path:
    """A Kaggle-layout folder at ``root`` with one constant-grey JPEG per ImageId of ``labels``."""
    for iid in labels:
        write_image(root / "train_images" / iid, (greys or {}).get(iid, 128))
    write_train_csv(root / "train.csv", labels, layout)
    return root


# The class combinations of the standard tiny data set and how many images have each.
COMBOS: dict[str, int] = {"": 24, "3": 12, "1": 6, "4": 6, "2": 3, "1 3": 6, "3 4": 3}


def class_rle(c: int, i: int) -> str:
    """A small RLE for class ``c`` of image number ``i`` (classes never overlap)."""
    return f"{(c - 1) * 100_000 + 1 + 7 * i} {30 + c}"


def standard_labels() -> dict[str, dict[int, str]]:
    """60 images: 24 clean, 27 single-class (3/1/4/2) and 9 multi-class ("1 3", "3 4")."""
    labels: dict[str, dict[int, str]] = {}
    i = 0
    for combo, n in COMBOS.items():
        for _ in range(n):
            labels[f"{i:04d}abc.jpg"] = {int(c): class_rle(int(c), i) for c in combo.split()}
            i += 1
    return labels


def combo(by_class: Labels) -> str:
    return " ".join(str(c) for c in sorted(by_class))


def grey_of(image_id: str) -> int:
    """A distinct grey level per image of :func:`standard_labels` (tells images apart in a cache)."""
    return 10 + 4 * int(image_id[:4])


def data_module(cfg, **data: object):
    """``cfg.data`` with some values replaced, instantiated, prepared and set up for fitting."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data.update(data)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def exit_code(main: Callable[[list[str]], int | None], argv: Sequence[object]) -> int:
    """A command's exit code: what its ``main`` returns, or argparse's ``SystemExit`` code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return 0 if code is None else int(code)


#: console script -> "module:function", as the installed steelseg declares them (pyproject.toml)
ENTRY_POINTS: dict[str, str] = {
    e.name: e.value
    for e in importlib.metadata.distribution("steelseg").entry_points
    if e.group == "console_scripts"
}


def run_main(
    command: str, args: Sequence[object], monkeypatch: pytest.MonkeyPatch, logs: bool = False
) -> int:
    """Run a console script's ``main()`` in this process, as the script would; its exit code.

    ``sys.argv`` is set, so argparse and Hydra entry points both read their arguments from it.
    A ``main()`` that returns its code is exited with it, as its console script does; a
    ``SystemExit`` carrying a message prints it to stderr and gives 1, as the interpreter
    does. ``logs``: the root logger starts without pytest's handlers, so the command's
    ``logging.basicConfig`` logs to stderr.
    """
    module, func = ENTRY_POINTS[command].split(":")
    main = getattr(importlib.import_module(module), func)
    monkeypatch.setattr(sys, "argv", [command, *map(str, args)])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    if logs:
        root.handlers[:] = []
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # a Hydra entry point leaves itself initialised
        root.handlers[:], root.level = handlers, level  # and its logging set up
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def eval_ckpt(ckpt, split="val", data_root=None, split_file=None, **kwargs):
    """What steelseg-eval does in the library: the run's labelled split, the checkpoint on
    PyTorch (with its tuned values), :func:`steelseg.evaluate.evaluate`."""
    from steelseg.evaluate import evaluate
    from steelseg.labelled import labelled_split, model_checkpoint
    from steelseg.predict import Predictor

    images = labelled_split(model_checkpoint(ckpt), split, data_root, split_file)
    return evaluate(Predictor.from_checkpoint(ckpt, "cpu"), images, split, **kwargs)


def tune_ckpt(ckpt, split="val", data_root=None, split_file=None, **kwargs):
    """What steelseg-tune does in the library: the run's labelled split, the plain checkpoint
    on PyTorch, :func:`steelseg.tune.tune`."""
    from steelseg.labelled import labelled_split, model_checkpoint
    from steelseg.predict import Predictor
    from steelseg.tune import tune

    images = labelled_split(model_checkpoint(ckpt), split, data_root, split_file)
    return tune(Predictor.from_checkpoint(ckpt, "cpu", use_tuned=False), images, split, **kwargs)


#: headless Chromium with no network use of its own, as the browser tests start it
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests may run as root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
)


def checked_run(*cmd: object, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with the end of its stderr unless it exits 0."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return done


def torchless_venv(folder: Path, root: Path, requirements: Path, extra: str | None = None) -> Path:
    """A new virtual environment in ``folder`` with steelseg (``--no-deps``, from ``root``),
    a requirements file and, given ``extra``, the requirements of that steelseg extra (read
    from the installed metadata: pyproject.toml is the one list), checked to hold no PyTorch;
    its ``bin/`` folder."""
    checked_run(sys.executable, "-m", "venv", folder, timeout=300)
    python = folder / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    checked_run(*pip, "--no-deps", root, timeout=900)
    more = extra_requirements(python, extra) if extra else []
    checked_run(*pip, "-r", requirements, *more, timeout=900)
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert checked_run(python, "-c", probe).stdout.strip() == "True"
    return folder / "bin"


def extra_requirements(python: Path, extra: str) -> list[str]:
    """The requirements of steelseg's ``extra`` as the metadata in ``python``'s environment
    lists them."""
    import json

    from packaging.requirements import Requirement

    probe = "import importlib.metadata as m, json; print(json.dumps(m.requires('steelseg')))"
    out = []
    for line in json.loads(checked_run(python, "-c", probe).stdout):
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": extra}):
            req.marker = None
            out.append(str(req))
    assert out, f"no requirements for the extra {extra!r} in steelseg's metadata"
    return out
