"""Which images to predict: files, folders and globs, and the labels each folder carries.

``collect_inputs(["a.jpg", "data/severstal", "strips/*.png"])`` gives one :class:`Source` per
image file, in order, each with the labels of its folder: the ``train.csv`` beside a Kaggle
``train_images/``, or the ``masks/`` beside the folder layout's ``images/``. The
:class:`Skipped` list records the inputs a loop over sources had to skip, and why.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from steelseg.io import images_in
from steelseg.layouts import FOLDER_IMAGES, FOLDER_MASKS, KAGGLE_CSV, KAGGLE_IMAGES

log = logging.getLogger(__name__)

KAGGLE_TEST_IMAGES = "test_images"  # the Kaggle test folder (with sample_submission.csv)


@dataclass(frozen=True)
class Source:
    """One input image: its file, its ImageId (file name) and the labels of its folder."""

    path: Path
    image_id: str
    #: train.csv of a Kaggle-layout folder (images not in it are clean), or the masks/ folder
    #: of a folder layout (masks/<stem>.png; images without one are unlabelled)
    labels: Path | None = None

    @classmethod
    def of(cls, path: str | os.PathLike) -> Source:
        """A file, labelled by the ``train.csv`` beside its folder when that is
        ``train_images/``, or by the ``masks/`` beside it when that is ``images/``."""
        path = Path(path)
        return cls(path, path.name, _kaggle_labels(path.parent))


def _kaggle_labels(folder: Path) -> Path | None:
    """The labels beside a labelled image folder: train.csv beside a Kaggle ``train_images/``,
    or ``masks/`` beside the folder layout's ``images/``; None for any other folder."""
    if folder.name == KAGGLE_IMAGES:
        csv = folder.parent / KAGGLE_CSV
        return csv if csv.is_file() else None
    masks = folder.parent / FOLDER_MASKS
    return masks if folder.name == FOLDER_IMAGES and masks.is_dir() else None


def unmatched_reason(text: str) -> str:
    """Why an input (a file, folder or glob) matched no image file: the skip reason."""
    path = Path(text)
    if path.is_dir():
        return "a folder without image files"
    if any(c in text for c in "*?["):
        return "no image file matches it"
    return "no such file or folder"


def no_images_error(inputs: Sequence[str | os.PathLike]) -> ValueError:
    """The one-line error when none of ``inputs`` gave an image, each with its reason."""
    reasons = "; ".join(f"{text}: {unmatched_reason(str(text))}" for text in inputs)
    return ValueError(f"no input images ({reasons})")


def none_readable_error() -> ValueError:
    """The one-line error when every input was skipped (each named by ``on_skip`` before)."""
    return ValueError("no input image could be read; see the messages above")


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Source], list[str]]:
    """Expand image files, folders and globs into image sources.

    A folder holding ``train_images/`` (a Kaggle-layout folder) means its train images, with
    ground truth from its ``train.csv``; one holding ``images/`` and no images of its own (the
    folder layout) means those, with ground truth from its ``masks/``; one holding only
    ``test_images/`` means those. Files in a folder are taken by image suffix; files named or
    matched by a glob are all tried.

    Returns:
        The sources in order (duplicate files once), and the inputs that matched nothing.
    """
    found: list[Source] = []
    empty: list[str] = []
    for text in map(str, inputs):
        path = Path(text)
        if path.is_dir():
            folder = path
            if (path / KAGGLE_IMAGES).is_dir():
                folder = path / KAGGLE_IMAGES
            elif (path / FOLDER_IMAGES).is_dir() and not images_in(path):
                folder = path / FOLDER_IMAGES
            elif (path / KAGGLE_TEST_IMAGES).is_dir() and not images_in(path):
                folder = path / KAGGLE_TEST_IMAGES
            new = [Source.of(p) for p in images_in(folder)]
        elif path.is_file():
            new = [Source.of(path)]
        else:
            new = [Source.of(m) for m in sorted(glob.glob(text)) if Path(m).is_file()]
        if not new:
            empty.append(text)
        found.extend(new)
    seen: set[Path] = set()
    unique = []
    for s in found:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique, empty


def log_skip(source: Source, reason: str) -> None:
    """The default report of a skipped input: a warning ``skipped <file>: <reason>``."""
    log.warning("skipped %s: %s", source.path, reason)


class Skipped(list):
    """The inputs :meth:`Predictor.predict_files` skipped: ``(source, reason)`` pairs.

    Pass it as ``on_skip``; it records each skip and tells ``report`` (default: a warning).
    """

    def __init__(self, report: Callable[[Source, str], None] = log_skip) -> None:
        super().__init__()
        self.report = report

    def __call__(self, source: Source, reason: str) -> None:
        self.append((source, reason))
        self.report(source, reason)

    def by_path(self) -> dict[str, str]:
        """``{file: reason}`` (predict.json, pseudo.json)."""
        return {str(s.path): reason for s, reason in self}

    def by_id(self) -> list[dict[str, str]]:
        """``[{"image_id": ..., "reason": ...}]`` (eval.json, the tuned sidecar)."""
        return [{"image_id": s.image_id, "reason": reason} for s, reason in self]
