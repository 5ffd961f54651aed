"""Bad inputs to every command: the exact error a user sees, the exit code, nothing left behind.

Each :class:`Case` is one bad input to one console script: a function that builds the input
under ``tmp_path`` and returns the command's arguments, a stable fragment of the one-line error
and the exit code. The cases run in-process through the command's ``main()`` (same code, same
exit code and message as the console script, without a new interpreter per case);
:func:`test_console_scripts_give_the_same_errors` runs a few through the real console scripts.
To cover another command, add its cases to :data:`CASES`.

The library-level messages (every RLE rule, every CSV rule, ...) are tested one by one in
test_rle.py, test_prepare.py and test_dataset.py; here each kind of bad input is followed to the
command line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_overrides
from helpers import jpeg_bytes, run_main, standard_labels, write_image, write_kaggle
from steelseg import prepare, rle

# ----------------------------------------------------------------------------- the runner
#: Files that must not exist anywhere under tmp_path after a failed command.
LEFTOVERS = ("split.csv", "prepare.json", "metrics.json", "*.ckpt", "cache_*", "*.tmp")


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: Test id.
        command: Console script (a key of :data:`ENTRY_POINTS`).
        make: ``make(tmp_path, ctx) -> arguments``: writes the bad input under ``tmp_path``;
            ``ctx`` gives the shared fixtures (``ctx.synth_root``, ``ctx.tiny_ckpt``).
        message: A stable fragment of the error line.
        code: Expected exit code (2: steelseg's bad-input code and argparse's; 1: Hydra's
            config errors).
        one_line: The error is one ``<command>: error: ...`` line (False for Hydra's own
            multi-line config messages).
        leftovers: Globs that must match nothing under ``tmp_path`` afterwards.
        prefix: How the line holding ``message`` starts (default ``<command>: error: ``).
        written: Globs (under ``tmp_path``) that must each match a file afterwards: the
            outputs of the good inputs when a bad one is skipped.
        logs: The command's own ``logging.basicConfig`` writes to stderr, as in the console
            script (pytest's log capture is set aside), for messages that are log warnings.
    """

    id: str
    command: str
    make: Callable[[Path, Ctx], list[str]]
    message: str
    code: int = 2
    one_line: bool = True
    leftovers: tuple[str, ...] = LEFTOVERS
    prefix: str | None = None
    written: tuple[str, ...] = ()
    logs: bool = False


@dataclass
class Ctx:
    synth_root: Path
    request: pytest.FixtureRequest

    @property
    def tiny_ckpt(self) -> Path:  # built only by the cases that need it
        return self.request.getfixturevalue("tiny_ckpt")


def check_failure(case: Case, code: int, out: str, err: str, tmp_path: Path) -> None:
    assert code == case.code, f"exit code {code}, expected {case.code}\n{err[-2000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    assert case.message in err, err[-2000:]
    if case.one_line:
        prefix = case.prefix if case.prefix is not None else f"{case.command}: error: "
        lines = [ln for ln in err.splitlines() if case.message in ln]
        assert len(lines) == 1 and lines[0].startswith(prefix), err[-2000:]
    left = [str(p) for g in case.leftovers for p in tmp_path.rglob(g)]
    assert not left, f"partial output left behind: {left}"
    missing = [g for g in case.written if not any(p.is_file() for p in tmp_path.glob(g))]
    assert not missing, f"outputs of the good inputs not written: {missing}\n{err[-2000:]}"


# ----------------------------------------------------------------------------- inputs
CUR = "ImageId,ClassId,EncodedPixels\n"


def kaggle(tmp: Path, csv_text: str | None = None, n: int = 60) -> Path:
    """A standard tiny Kaggle folder under ``tmp/data``; ``csv_text`` replaces train.csv."""
    labels = dict(list(standard_labels().items())[:n])
    root = write_kaggle(tmp / "data", labels)
    if csv_text is not None:
        (root / "train.csv").write_text(csv_text)
    return root


def prep_args(root: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(root), "--out", str(tmp / "out"), "--n-images", "all", *extra]


def bad_rle(rle_text: str) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        root = kaggle(tmp)
        with open(root / "train.csv", "a") as f:
            f.write(f"0001abc.jpg,2,{rle_text}\n")
        return prep_args(root, tmp)

    return make


def bad_csv(text: str) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        return prep_args(kaggle(tmp, text), tmp)

    return make


def binary_csv(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    (root / "train.csv").write_bytes(b"\xff\xd8\xff\xe0 a JPEG saved as train.csv")
    return prep_args(root, tmp)


def no_train_csv(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    (root / "train.csv").unlink()
    return prep_args(root, tmp)


def bad_image(kind: str) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        root = kaggle(tmp)
        path = root / "train_images" / "0003abc.jpg"
        if kind == "truncated":
            path.write_bytes(jpeg_bytes(90)[:-600])
        elif kind == "not-jpeg":
            path.write_text("this is not an image\n")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "wrong-size":
            write_image(path, 90, (256, 800))
        return prep_args(root, tmp)

    return make


def missing_image(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    (root / "train_images" / "0030abc.jpg").unlink()  # a defective image named in train.csv
    return prep_args(root, tmp)


def escaping_id(image_id: str) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        root = kaggle(tmp)
        with open(root / "train.csv", "a") as f:
            f.write(f"{image_id},1,1 5\n")
        return prep_args(root, tmp)

    return make


def escaping_split_file(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    (tmp / "my_split.csv").write_text("ImageId,split\n0001abc.jpg,train\n../0002abc.jpg,test\n")
    return prep_args(root, tmp, "--split-file", str(tmp / "my_split.csv"))


def empty_folder(tmp: Path, ctx: Ctx) -> list[str]:
    (tmp / "data").mkdir()
    return prep_args(tmp / "data", tmp)


def empty_images_folder(tmp: Path, ctx: Ctx) -> list[str]:
    (tmp / "data" / "train_images").mkdir(parents=True)
    (tmp / "data" / "train.csv").write_text(CUR)
    return prep_args(tmp / "data", tmp)


def blocker(tmp: Path) -> Path:
    """A regular file: a folder below it cannot be created, even by root."""
    path = tmp / "blocker"
    path.write_text("a file where a folder is expected\n")
    return path


def prepare_into_file(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    return ["--data-dir", str(root), "--out", str(blocker(tmp) / "out"), "--n-images", "all"]


def read_only_folder(tmp: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is still writable (see *-under-a-file)")
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def prepare_into_read_only(tmp: Path, ctx: Ctx) -> list[str]:
    root = kaggle(tmp)
    return ["--data-dir", str(root), "--out", str(read_only_folder(tmp) / "out")]


def synth_into(where: Callable[[Path], Path]) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        return ["--out", str(where(tmp) / "synth"), "--n-images", "2", "--quiet"]

    return make


# ----------------------------------------------------------------------------- train inputs
def train_args(tmp: Path, root: Path, *extra: str, arch: str = "fpn") -> list[str]:
    """steelseg-train arguments: the tiny recipe on ``root``, everything written under tmp."""
    base = tiny_overrides(root)
    if arch != "fpn":  # the FPN decoder sizes of the tiny recipe do not apply
        base = [a for a in base if "decoder_" not in a] + [f"model={arch}"]
    return [
        *base,
        f"data.prepared_dir={tmp / 'prepared'}",
        f"hydra.run.dir={tmp / 'run'}",
        "test=false",
        *extra,
    ]


def train_on(make_data: Callable[[Path, Ctx], list[str]]) -> Callable[[Path, Ctx], list[str]]:
    """steelseg-train on the data folder a prepare case builds."""

    def make(tmp: Path, ctx: Ctx) -> list[str]:
        make_data(tmp, ctx)
        return train_args(tmp, tmp / "data")

    return make


def prepared_then(change: str) -> Callable[[Path, Ctx], list[str]]:
    """A split prepared as steelseg-train would, then the data changes under it."""

    def make(tmp: Path, ctx: Ctx) -> list[str]:
        root = kaggle(tmp)
        prepare.prepare(root, tmp / "prepared", n_images=None, split=(0.8, 0.1, 0.1), seed=42)
        if change == "train.csv":
            with open(root / "train.csv", "a") as f:
                f.write("0000abc.jpg,4,90001 5\n")
        elif change == "image removed":
            (root / "train_images" / "0005abc.jpg").unlink()
        elif change == "escaping id":
            split = pd.read_csv(tmp / "prepared" / "split.csv", keep_default_na=False)
            split.loc[3, "ImageId"] = "../0005abc.jpg"
            split.to_csv(tmp / "prepared" / "split.csv", index=False)
        return train_args(tmp, root)

    return make


def train_with(*extra: str, arch: str = "fpn") -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        return train_args(tmp, ctx.synth_root, *extra, arch=arch)

    return make


def resume_from(kind: str, arch: str = "fpn") -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        if kind == "other architecture":
            path = ctx.tiny_ckpt
        elif kind == "missing":
            path = tmp / "nothere.ckpt"
        elif kind == "truncated":
            path = tmp / "saved" / "last.ckpt"
            path.parent.mkdir()
            path.write_bytes(ctx.tiny_ckpt.read_bytes()[:5000])
        elif kind == "unsafe":
            path = tmp / "saved" / "last.ckpt"
            path.parent.mkdir()
            ckpt = torch.load(ctx.tiny_ckpt, weights_only=True)
            ckpt["note"] = Path("a pathlib object: not a plain value")
            torch.save(ckpt, path)
        elif kind == "last without runs":
            path = "last"
        args = train_args(tmp, ctx.synth_root, f"ckpt_path={path}", arch=arch)
        return args

    return make


def train_into(where: Callable[[Path], Path]) -> Callable[[Path, Ctx], list[str]]:
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        args = train_args(tmp, ctx.synth_root)
        return [a for a in args if not a.startswith("hydra.run.dir=")] + [
            f"hydra.run.dir={where(tmp) / 'run'}"
        ]

    return make


# ----------------------------------------------------------------------------- inference inputs
#: What steelseg-predict/-eval/-tune/-pseudo/-export/-compare write: --out is always tmp/out (or
#: below tmp/blocker), a sidecar beside the checkpoint, temp files and folders.
INFER_LEFTOVERS = ("out", ".out.*", "*.tmp", "*.postprocess.json", "summary.*")
#: A skipped input: the good inputs' outputs stay; only temporary files must not.
SKIP_LEFTOVERS = ("*.tmp", ".out.*")
PD, E, U, PS, X, C = (
    "steelseg-predict",
    "steelseg-eval",
    "steelseg-tune",
    "steelseg-pseudo",
    "steelseg-export",
    "steelseg-compare",
)
GOOD = ("a.jpg", "b.jpg")  # good images of the small input folders


def make_ckpt(path: Path, kind: str, ctx: Ctx) -> Path:
    """A checkpoint file of one kind at ``path``: good (a copy of the tiny one), not a
    checkpoint, a plain dict saved with torch.save (not steelseg's), or missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        shutil.copyfile(ctx.tiny_ckpt, path)
    elif kind == "not a checkpoint":
        path.write_text("weights: none, this is a text file\n")
    elif kind == "plain dict":
        torch.save({"weights": torch.zeros(4), "epoch": 3}, path)
    return path


def in_run(tmp: Path, ctx: Ctx, kind: str) -> Path:
    """``kind`` checkpoint in tmp/run/checkpoints/ beside a copy of the tiny run's config.yaml
    (which finds the synthetic data and the prepared split, as for a real run)."""
    (tmp / "run").mkdir()
    shutil.copyfile(ctx.tiny_ckpt.parent.parent / "config.yaml", tmp / "run" / "config.yaml")
    return make_ckpt(tmp / "run" / "checkpoints" / "model.ckpt", kind, ctx)


def images_folder(tmp: Path, ctx: Ctx, bad: str | None) -> Path:
    """tmp/in: two full-size synthetic images (a.jpg, b.jpg) and one bad one (``bad``)."""
    folder = tmp / "in"
    folder.mkdir()
    sources = sorted((ctx.synth_root / "train_images").iterdir())
    for name, src in zip(GOOD, sources):
        shutil.copyfile(src, folder / name)
    if bad == "cut.jpg":  # a truncated JPEG
        (folder / bad).write_bytes(sources[2].read_bytes()[:3000])
    elif bad == "small.jpg":  # a valid image of the wrong size
        write_image(folder / bad, 90, (128, 800))
    elif bad == "unreadable":  # every image: text named .jpg
        for image in folder.iterdir():
            image.write_text("not an image\n")
    return folder


def labelled(tmp: Path, ctx: Ctx, bad: str | None, split: str = "val") -> list[str]:
    """--data-root/--split-file: the folder of :func:`images_folder` as a Kaggle layout."""
    data = tmp / "data"
    images_folder(tmp, ctx, bad).rename(tmp / "in_moved")
    data.mkdir()
    (tmp / "in_moved").rename(data / "train_images")
    ids = sorted(p.name for p in (data / "train_images").iterdir())
    pd.DataFrame({"ImageId": ids, "split": split, "EncodedPixels": ""}).to_csv(
        tmp / "split.csv", index=False
    )
    return ["--data-root", str(data), "--split-file", str(tmp / "split.csv")]


def predict_with(ckpt: str, *extra: str, bad: str | None = None, out: str = "folder"):
    """steelseg-predict (or -pseudo: the same arguments) on tmp/in."""

    def make(tmp: Path, ctx: Ctx) -> list[str]:
        path = ctx.tiny_ckpt if ckpt == "tiny" else make_ckpt(tmp / "model.ckpt", ckpt, ctx)
        if bad == "empty":
            (tmp / "in").mkdir()
        else:
            images_folder(tmp, ctx, bad)
        target = blocker(tmp) / "out" if out == "under a file" else tmp / "out"
        if out == "a file":
            target.write_text("a file where the output folder should go\n")
        return [str(path), str(tmp / "in"), "--out", str(target), *extra]

    return make


def eval_with(ckpt: str, *extra: str, bad: str | None = None, split: str = "val", out: str = "out"):
    """steelseg-eval / steelseg-tune: a run folder, and own data when ``bad`` is given."""

    def make(tmp: Path, ctx: Ctx) -> list[str]:
        path = in_run(tmp, ctx, ckpt)
        data = labelled(tmp, ctx, None if bad == "unreadable" else bad, split) if bad else []
        if bad == "unreadable":  # every image of the split unreadable
            for image in (tmp / "data" / "train_images").iterdir():
                image.write_text("not an image\n")
        target = blocker(tmp) / "out" if out == "under a file" else tmp / out
        return [str(path), "--split", "val", *data, "--out", str(target), "--no-progress", *extra]

    return make


#: a grid of one setting: tuning scores it in a blink
ONE_SETTING = ("--thresholds", "0.5", "--min-component-areas", "0", "--min-total-areas", "0")


def tune_with(ckpt: str, *extra: str, bad: str | None = None, sidecar: str = "file"):
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        args = eval_with(ckpt, bad=bad)(tmp, ctx)
        args = [a for a in args[: args.index("--out")]]  # steelseg-tune has no --out
        if sidecar == "folder":  # a folder where the sidecar goes: it cannot be written
            (tmp / "run" / "checkpoints" / "model.postprocess.json").mkdir()
        return [*args, "--no-progress", *ONE_SETTING, *extra]

    return make


def export_with(ckpt: str, *extra: str, out: str = "out"):
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        path = make_ckpt(tmp / "model.ckpt", ckpt, ctx) if ckpt != "tiny" else ctx.tiny_ckpt
        target = blocker(tmp) / "out" / "model.onnx" if out == "under a file" else tmp / "out"
        return [str(path), "--out", str(target / "model.onnx" if out == "out" else target), *extra]

    return make


def compare_with(kind: str):
    def make(tmp: Path, ctx: Ctx) -> list[str]:
        runs = tmp / "runs"
        (runs / "sub").mkdir(parents=True)  # folders, but no run in any
        if kind == "empty":
            return [str(runs)]
        (runs / "0").mkdir()
        (runs / "0" / "metrics.json").write_text(json.dumps({"metrics": {"val/iou": 0.5}}))
        return [str(runs), "--out", str(blocker(tmp) / "out")]

    return make


# Train-time leftovers: the ones above, except a prepared split of valid data (kept on purpose:
# it is the input of the next run) where the failure comes after preparation.
AFTER_PREPARE = ("metrics.json", "*.ckpt", "*.tmp")
# Checkpoint cases: the bad checkpoint itself is the input.
CKPT_LEFTOVERS = ("metrics.json", "checkpoints", "run/config.yaml", "split.csv", "cache_*", "*.tmp")

P, S, T = "steelseg-prepare", "steelseg-synth", "steelseg-train"
CASES = [
    # --- malformed RLE, every rule (the message names train.csv's line and ImageId)
    Case("rle-odd-tokens", P, bad_rle("1 3 10"), "RLE has an odd number of tokens (3)"),
    Case("rle-start-0", P, bad_rle("0 3"), "RLE start 0 < 1 (Kaggle runs are 1-indexed)"),
    Case("rle-negative-start", P, bad_rle("-5 3"), "RLE start -5 < 1"),
    Case("rle-length-0", P, bad_rle("10 0"), "RLE run length 0 < 1"),
    Case("rle-overlap", P, bad_rle("10 5 12 3"), "RLE runs are not increasing or overlap"),
    Case("rle-unsorted", P, bad_rle("100 5 10 3"), "RLE runs are not increasing or overlap"),
    Case("rle-past-end", P, bad_rle("409598 5"), "past the end of a 256x1600 image"),
    Case("rle-token", P, bad_rle("1 3 x 4"), "RLE token 'x' is not a positive integer"),
    Case("rle-float", P, bad_rle("1.5 3"), "RLE token '1.5' is not a positive integer"),
    Case("rle-huge", P, bad_rle("1 99999999999999999999999"), "too large for any image"),
    Case(
        "rle-line-named",
        P,
        bad_rle("1 3 10"),
        "train.csv line 47 (ImageId '0001abc.jpg', ClassId 2)",
    ),
    # --- CSV layout
    Case(
        "csv-missing-column",
        P,
        bad_csv("ImageId,EncodedPixels\n0001abc.jpg,1 3\n"),
        "train.csv has columns ['ImageId', 'EncodedPixels']; expected the 2019 layout",
    ),
    Case(
        "csv-renamed-columns",
        P,
        bad_csv("image_id,class_id,rle\n0001abc.jpg,1,1 3\n"),
        "train.csv has columns ['image_id', 'class_id', 'rle']; expected",
    ),
    Case("csv-class-5", P, bad_csv(CUR + "0001abc.jpg,5,1 3\n"), "ClassId '5' is not one of 1..4"),
    Case(
        "csv-duplicate-row",
        P,
        bad_csv(CUR + "0001abc.jpg,1,1 3\n0001abc.jpg,1,9 3\n"),
        "line 3: duplicate row for ImageId '0001abc.jpg' ClassId 1",
    ),
    Case("csv-empty-file", P, bad_csv(""), "train.csv is empty; it needs the header"),
    Case("csv-binary", P, binary_csv, "train.csv is not a text CSV (byte 0 is not UTF-8)"),
    Case(
        "csv-extra-field",
        P,
        bad_csv(CUR + "0001abc.jpg,1,1 3\n0002abc.jpg,1,1 3,oops\n"),
        "train.csv is not a well-formed CSV: Error tokenizing data. C error: Expected 3 fields in line 3, saw 4",
    ),
    Case(
        "csv-extra-field-every-row",
        P,
        bad_csv(CUR + "0001abc.jpg,1,1 3,oops\n0002abc.jpg,1,1 3,oops\n"),
        "train.csv has rows with more fields than its header",
    ),
    # --- images
    Case("image-missing", P, missing_image, "train.csv names 1 image(s) missing from"),
    Case("image-truncated", P, bad_image("truncated"), "0003abc.jpg (truncated JPEG)"),
    Case("image-not-jpeg", P, bad_image("not-jpeg"), "0003abc.jpg (unreadable: "),
    Case("image-empty-file", P, bad_image("empty"), "0003abc.jpg (unreadable: "),
    Case("image-wrong-size", P, bad_image("wrong-size"), "size 800x256, expected 1600x256"),
    # --- folders
    Case("empty-data-folder", P, empty_folder, "train_images does not exist: data_dir must be"),
    Case("no-images", P, empty_images_folder, "holds no images"),
    Case("no-train-csv", P, no_train_csv, "annotation CSV not found: "),
    # --- ImageIds escaping the data folder
    Case("id-parent", P, escaping_id("../x.jpg"), "ImageId '../x.jpg' is not a plain file name"),
    Case("id-absolute", P, escaping_id("/etc/passwd"), "'/etc/passwd' is not a plain file name"),
    Case("id-backslash", P, escaping_id("..\\x.jpg"), "is not a plain file name"),
    Case("id-in-split-file", P, escaping_split_file, "'../0002abc.jpg' is not a plain file name"),
    # --- unwritable output folder
    Case("prepare-out-under-a-file", P, prepare_into_file, "Not a directory"),
    Case("prepare-out-read-only", P, prepare_into_read_only, "Permission denied"),
    Case("synth-out-under-a-file", S, synth_into(blocker), "Not a directory"),
    Case("synth-out-read-only", S, synth_into(read_only_folder), "Permission denied"),
    Case(
        "train-run-folder-under-a-file",
        T,
        train_into(blocker),
        "cannot write the run folder",
    ),
    Case("train-run-folder-read-only", T, train_into(read_only_folder), "Permission denied"),
    # --- bad data reached through steelseg-train
    Case("train-bad-rle", T, train_on(bad_rle("1 3 10")), "RLE has an odd number of tokens"),
    Case("train-missing-image", T, train_on(missing_image), "names 1 image(s) missing from"),
    Case("train-truncated-image", T, train_on(bad_image("truncated")), "(truncated JPEG)"),
    Case(
        "train-empty-data-folder",
        T,
        lambda t, c: (t / "data").mkdir() or train_args(t, t / "data"),
        "has no train.csv. Download the Kaggle data",
    ),
    # --- a prepared split that no longer matches the data
    Case(
        "split-stale-train-csv",
        T,
        prepared_then("train.csv"),
        "was made from another train.csv",
        leftovers=AFTER_PREPARE,
    ),
    Case(
        "split-image-removed",
        T,
        prepared_then("image removed"),
        "listed image(s) are missing (0005abc.jpg)",
        leftovers=AFTER_PREPARE,
    ),
    Case(
        "split-escaping-id",
        T,
        prepared_then("escaping id"),
        "ImageId '../0005abc.jpg' is not a plain file name",
        leftovers=AFTER_PREPARE,
    ),
    # --- config typos and unknown choices: Hydra's messages, exit code 1
    Case(
        "config-typo",
        T,
        train_with("trainer.max_epoch=3"),
        "Could not override 'trainer.max_epoch'",
        code=1,
        one_line=False,
    ),
    Case(
        "config-unknown-choice",
        T,
        train_with("model=fpnn"),
        "Could not find 'model/fpnn'",
        code=1,
        one_line=False,
    ),
    Case(
        "config-unknown-key-in-group",
        T,
        train_with("data.heigth=64"),
        "Key 'heigth' is not in struct",
        code=1,
        one_line=False,
    ),
    Case(
        "config-unknown-encoder",
        T,
        train_with("model.encoder_name=resnet9000"),
        "unknown encoder 'resnet9000'",
    ),
    Case(
        "config-unknown-optimizer",
        T,
        train_with("model.optimizer.name=adamx"),
        "unknown optimizer 'adamx'; choose from ['adam', 'adamw', 'sgd']",
    ),
    Case(
        "config-bad-size",
        T,
        train_with("data.height=250"),
        "data.height=250 must be a positive multiple of 32",
    ),
    # --- checkpoints
    Case(
        "ckpt-other-architecture",
        T,
        resume_from("other architecture", arch="unet"),
        "was trained with arch='fpn', arch_kwargs=",
    ),
    Case("ckpt-missing", T, resume_from("missing"), "nothere.ckpt does not exist"),
    Case(
        "ckpt-last-without-runs", T, resume_from("last without runs"), "ckpt_path=last: no run in"
    ),
    Case(
        "ckpt-truncated",
        T,
        resume_from("truncated"),
        "is truncated or not a checkpoint",
        leftovers=CKPT_LEFTOVERS,
    ),
    Case(
        "ckpt-needs-unsafe-loading",
        T,
        resume_from("unsafe"),
        "holds Python objects besides tensors and plain values, so loading it could run code",
        leftovers=CKPT_LEFTOVERS,
    ),
    # --- steelseg-predict (test_predict.py has: missing checkpoint, text file as checkpoint,
    # no image matching, a non-image skipped, a wrong-size image resized)
    Case(
        "predict-ckpt-not-steelseg",
        PD,
        predict_with("plain dict"),
        "model.ckpt is not a steelseg checkpoint (no steelseg hyper-parameters and weights)",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-threshold-out-of-range",
        PD,
        predict_with("tiny", "--threshold", "1.5"),
        "postprocess threshold must be a number in (0, 1), got 1.5",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-unknown-tta",
        PD,
        predict_with("tiny", "--tta", "rotate"),
        "error: argument --tta: unknown TTA 'rotate'; choose from ['hflip', 'vflip']",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-out-under-a-file",
        PD,
        predict_with("tiny", out="under a file"),
        "blocker is a file, not a folder; choose another --out",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-empty-folder",
        PD,
        predict_with("tiny", bad="empty"),
        "no input images (",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-no-readable-image",
        PD,
        predict_with("tiny", bad="unreadable"),
        "no input image could be read; see the messages above",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "predict-truncated-image-skipped",
        PD,
        predict_with("tiny", "--masks-only", bad="cut.jpg"),
        "cut.jpg: truncated JPEG (no end-of-image marker)",
        code=3,
        prefix="steelseg-predict: skipped ",
        leftovers=(*SKIP_LEFTOVERS, "cut.png"),
        written=("out/masks/a.png", "out/masks/b.png", "out/predictions.csv", "out/predict.json"),
    ),
    # --- steelseg-eval (test_evaluate.py has: missing checkpoint, unknown split, missing data
    # folder, --threshold 1.5, unknown TTA, a non-image skipped)
    Case(
        "eval-not-a-checkpoint",
        E,
        eval_with("not a checkpoint"),
        "model.ckpt is truncated or not a checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "eval-ckpt-not-steelseg",
        E,
        eval_with("plain dict"),
        "model.ckpt is not a steelseg checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "eval-wrong-size-image-skipped",
        E,
        eval_with("good", "--panels", "0", bad="small.jpg"),
        "small.jpg: it is 800x128, but its mask is 1600x256",
        code=3,
        prefix="steelseg-eval: skipped ",
        leftovers=SKIP_LEFTOVERS,
        written=("out/eval.json", "out/report.html"),
        logs=True,
    ),
    Case(
        "eval-truncated-image-skipped",
        E,
        eval_with("good", "--panels", "0", bad="cut.jpg"),
        "cut.jpg: truncated JPEG",
        code=3,
        prefix="steelseg-eval: skipped ",
        leftovers=SKIP_LEFTOVERS,
        written=("out/eval.json", "out/report.html"),
        logs=True,
    ),
    Case(
        "eval-no-readable-image",
        E,
        eval_with("good", bad="unreadable"),
        "no image of split 'val' could be read",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "eval-empty-split",
        E,
        eval_with("good", bad="small.jpg", split="train"),
        "split.csv holds no images",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "eval-out-under-a-file",
        E,
        eval_with("good", "--panels", "0", out="under a file"),
        "Not a directory",
        leftovers=INFER_LEFTOVERS,
    ),
    # --- steelseg-tune (test_tune.py has: missing checkpoint, unknown split, bad thresholds)
    Case(
        "tune-not-a-checkpoint",
        U,
        tune_with("not a checkpoint"),
        "model.ckpt is truncated or not a checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "tune-ckpt-not-steelseg",
        U,
        tune_with("plain dict"),
        "model.ckpt is not a steelseg checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "tune-bad-post-processing",
        U,
        tune_with("good", "--dilate", "-1"),
        "postprocess dilate must be an integer >= 0, got -1",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "tune-sidecar-unwritable",
        U,
        tune_with("good", sidecar="folder"),
        "Is a directory",
        leftovers=SKIP_LEFTOVERS,
    ),
    Case(
        "tune-wrong-size-image-skipped",
        U,
        tune_with("good", bad="small.jpg"),
        "small.jpg: it is 800x128, but its mask is 1600x256",
        code=3,
        prefix="steelseg-tune: skipped ",
        leftovers=SKIP_LEFTOVERS,
        written=("run/checkpoints/model.postprocess.json",),
        logs=True,
    ),
    # --- steelseg-pseudo (test_pseudo.py has: a non-image skipped, low >= high)
    Case(
        "pseudo-ckpt-missing",
        PS,
        predict_with("missing"),
        "model.ckpt does not exist",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-not-a-checkpoint",
        PS,
        predict_with("not a checkpoint"),
        "model.ckpt is truncated or not a checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-ckpt-not-steelseg",
        PS,
        predict_with("plain dict"),
        "model.ckpt is not a steelseg checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-threshold-out-of-range",
        PS,
        predict_with("tiny", "--threshold", "1.5"),
        "postprocess threshold must be a number in (0, 1), got 1.5",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-out-under-a-file",
        PS,
        predict_with("tiny", out="under a file"),
        "blocker is a file, not a folder; choose another --out",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-out-is-a-file",
        PS,
        predict_with("tiny", out="a file"),
        "out is a file, not a folder; choose another --out",
        leftovers=(".out.*", "*.tmp", "pseudo.json"),
    ),
    Case(
        "pseudo-no-readable-image",
        PS,
        predict_with("tiny", bad="unreadable"),
        "no input image could be read; see the messages above",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-empty-folder",
        PS,
        predict_with("tiny", bad="empty"),
        "no input images (",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "pseudo-wrong-size-image-skipped",
        PS,
        predict_with("tiny", "--max-uncertain", "1", bad="small.jpg"),
        "small.jpg: it is 800x128, but this needs 1600x256 images",
        code=3,
        prefix="steelseg-pseudo: skipped ",
        leftovers=(*SKIP_LEFTOVERS, "out/train_images/small.jpg"),
        written=("out/train_images/a.jpg", "out/train_images/b.jpg", "out/pseudo.json"),
    ),
    Case(
        "pseudo-truncated-image-skipped",
        PS,
        predict_with("tiny", "--max-uncertain", "1", bad="cut.jpg"),
        "cut.jpg: truncated JPEG",
        code=3,
        prefix="steelseg-pseudo: skipped ",
        leftovers=(*SKIP_LEFTOVERS, "out/train_images/cut.jpg"),
        written=("out/train_images/a.jpg", "out/train_images/b.jpg", "out/scores.csv"),
    ),
    # --- steelseg-export (test_export.py has: missing checkpoint)
    Case(
        "export-not-a-checkpoint",
        X,
        export_with("not a checkpoint"),
        "model.ckpt is truncated or not a checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "export-ckpt-not-steelseg",
        X,
        export_with("plain dict"),
        "model.ckpt is not a steelseg checkpoint",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "export-unknown-format",
        X,
        export_with("tiny", "--format", "tflite"),
        "argument --format: invalid choice: 'tflite'",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "export-out-under-a-file",
        X,
        export_with("tiny", out="under a file"),
        "blocker is a file, not a folder; choose another --out",
        leftovers=INFER_LEFTOVERS,
    ),
    # --- steelseg-compare (test_compare.py has: an empty folder and a missing one, called
    # directly); its errors are "steelseg-compare: <message>", exit code 1
    Case(
        "compare-empty-folder",
        C,
        compare_with("empty"),
        "no runs found in",
        code=2,
        prefix="steelseg-compare: error: ",
        leftovers=INFER_LEFTOVERS,
    ),
    Case(
        "compare-out-under-a-file",
        C,
        compare_with("out under a file"),
        "Not a directory",
        code=2,
        prefix="steelseg-compare: error: ",
        leftovers=INFER_LEFTOVERS,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error(case, tmp_path, synth_root, request, capsys, monkeypatch):
    args = case.make(tmp_path, Ctx(synth_root, request))
    capsys.readouterr()
    code = run_main(case.command, args, monkeypatch, case.logs)
    out, err = capsys.readouterr()
    check_failure(case, code, out, err, tmp_path)


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(SCRIPT_CASES) <= {c.id for c in CASES}


# The real console scripts, one case each. steelseg-train's subprocess imports torch and
# Lightning (10-20 s on a busy 2-core machine), so it is slow-marked.
SCRIPT_CASES = ["rle-odd-tokens", "synth-out-under-a-file", "ckpt-other-architecture"]
SCRIPT_PARAMS = [
    pytest.param(c, marks=pytest.mark.slow) if c.startswith("ckpt") else c for c in SCRIPT_CASES
]


@pytest.mark.parametrize("case_id", SCRIPT_PARAMS)
def test_console_scripts_give_the_same_errors(case_id, tmp_path, synth_root, request):
    case = next(c for c in CASES if c.id == case_id)
    args = case.make(tmp_path, Ctx(synth_root, request))
    script = Path(sys.executable).parent / case.command
    exe = [str(script)] if script.exists() else [shutil.which(case.command) or case.command]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*exe, *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    check_failure(case, done.returncode, done.stdout, done.stderr, tmp_path)


# ----------------------------------------------------------------------------- library level
def test_train_into_an_unwritable_folder_raises_before_any_work(tmp_path, synth_root):
    from steelseg import config
    from steelseg.train import train

    cfg = config.compose(tiny_overrides(synth_root), output_dir=blocker(tmp_path) / "run")
    with pytest.raises(
        OSError, match=r"cannot create the run folder .*blocker/run \(Not a directory\)"
    ):
        train(cfg)


def test_other_architecture_checkpoint_is_one_line_in_python(tiny_ckpt):
    from steelseg.model import SteelSegModule

    with pytest.raises(ValueError) as info:
        SteelSegModule.load_from_checkpoint(tiny_ckpt, arch="unet", arch_kwargs={})
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "does not fit this model: weights" in message and "missing" in message


# ----------------------------------------------------------------------------- fuzz
SHAPE34 = (3, 4)
names = st.sampled_from(["a.jpg", "b.jpg", "c_1.jpg", "../a.jpg", "/x.jpg", "", " ", "a b.jpg"])
class_ids = st.sampled_from(["1", "2", "3", "4", "0", "5", "x", "", "1.0", " 2"])
rle_texts = st.one_of(
    st.lists(st.integers(-2, 14), max_size=6).map(lambda v: " ".join(map(str, v))),
    st.text(alphabet="0123456789 -x\t", max_size=10),
)
cells = st.text(alphabet='ab_.,"\n 1239x', max_size=8)


@st.composite
def csv_texts(draw) -> str:
    """A train.csv: mostly well-formed rows of either layout with bad values mixed in."""
    layout = draw(st.sampled_from(["current", "2019", "other", "raw"]))
    if layout == "raw":
        return draw(st.text(max_size=60))
    rows = draw(st.lists(st.tuples(names, class_ids, rle_texts), max_size=6))
    if layout == "current":
        body = [f"{n},{c},{r}" for n, c, r in rows]
        head = "ImageId,ClassId,EncodedPixels"
    elif layout == "2019":
        body = [f"{n}_{c},{r}" for n, c, r in rows]
        head = "ImageId_ClassId,EncodedPixels"
    else:
        body = [",".join(draw(st.lists(cells, min_size=1, max_size=4))) for _ in rows]
        head = draw(st.sampled_from(["ImageId,EncodedPixels", "a,b,c", "ImageId,ClassId"]))
    return "\n".join([head, *body]) + draw(st.sampled_from(["", "\n", "\n\n"]))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=csv_texts())
def test_fuzz_read_annotations_is_valid_or_a_value_error(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        df = rle.read_annotations(path, SHAPE34)
    except ValueError as e:
        assert "train.csv" in str(e)  # every message names the file
        return
    # accepted: every row obeys every rule
    assert list(df.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert not df.duplicated(["ImageId", "ClassId"]).any()
    for iid, c, s in df.itertuples(index=False):
        assert rle.check_image_id(iid) == iid and 1 <= c <= 4 and s
        assert rle.decode(s, SHAPE34).sum() > 0
    assert set(df["ImageId"]) <= set(df.attrs["image_ids"])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40))
def test_fuzz_rle_reader_on_arbitrary_bytes(data):
    text = data.decode("latin-1")
    try:
        mask = rle.decode(text, SHAPE34)
    except ValueError:
        return
    assert mask.shape == SHAPE34 and set(np.unique(mask).tolist()) <= {0, 1}
    assert rle.decode(rle.encode(mask), SHAPE34).tolist() == mask.tolist()


# ----------------------------------------------------------------------------- odds and ends
def test_unsafe_checkpoint_loads_when_trusted(tiny_ckpt, tmp_path):
    from steelseg.model import SteelSegModule

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["note"] = Path("not a plain value")
    torch.save(ckpt, tmp_path / "unsafe.ckpt")
    with pytest.raises(ValueError, match="trust_checkpoint=true"):
        SteelSegModule.load_from_checkpoint(tmp_path / "unsafe.ckpt")
    module = SteelSegModule.load_from_checkpoint(tmp_path / "unsafe.ckpt", weights_only=False)
    assert module.hparams.arch == "fpn"


def test_checkpoint_that_is_not_a_checkpoint(tmp_path):
    from steelseg.model import SteelSegModule

    for name, data in (
        ("text.ckpt", b"hello"),
        ("empty.ckpt", b""),
        ("pickle.ckpt", pickle.dumps(1)),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="is truncated or not a checkpoint"):
            SteelSegModule.load_from_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteelSegModule.load_from_checkpoint(tmp_path / "nothere.ckpt")
