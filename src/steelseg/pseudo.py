"""Pseudo-labelling: confident predictions on unlabelled images become extra training data.

The idea of the seed and of the 1st-place Kaggle solution: predict on unlabelled images (e.g.
the Kaggle ``test_images/``), keep only the images the model is sure about, and train again
with them added::

    steelseg-pseudo CHECKPOINT data/severstal/test_images --out data/pseudo
    steelseg-train data=severstal data.root=data/severstal '++data.extra_roots=[data/pseudo]'

An image is kept when at most ``max_uncertain`` of its pixels (default 0: none) have a
probability between ``low`` and ``high`` (default 0.2 and 0.8). ``OUT`` is a Kaggle-layout
folder:

* ``train_images/``: links to the kept images (or copies with ``--copy``);
* ``train.csv``: ``ImageId,ClassId,EncodedPixels``, one row per kept image with a predicted
  defect. The model is binary and does not know the defect class, so ClassId is
  :data:`steelseg.rle.ANY_CLASS` (0); kept images without a row are defect-free, as in Kaggle's
  file. steelseg reads ClassId 0 only where asked to (``data.extra_roots``, prediction);
* ``scores.csv``: every image tried, with its uncertain fraction, whether it was kept and
  its predicted defect area; ``pseudo.json``: the settings and counts.

``data.extra_roots`` adds those images to the training split only; validation and test stay
the labelled split's, so scores remain comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from steelseg import rle
from steelseg.predict import Predictor, check_out_folder, collect_inputs, read_grey
from steelseg.prepare import atomic_write_text


def uncertain_fraction(prob: np.ndarray, low: float, high: float) -> float:
    """Share of pixels whose probability lies strictly between ``low`` and ``high``."""
    return float(np.count_nonzero((prob > low) & (prob < high))) / prob.size


def pseudo_label(
    predictor: Predictor,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    low: float = 0.2,
    high: float = 0.8,
    max_uncertain: float = 0.0,
    copy: bool = False,
    progress: bool = True,
) -> dict:
    """Predict on ``images`` and write the confident ones as a Kaggle-layout folder ``out``.

    Args:
        predictor: The model, with the post-processing that makes the masks.
        images: Image files, folders or globs (as for ``steelseg-predict``).
        out: Output folder; replaced as a whole when it holds an earlier pseudo-label set.
        low: Probabilities at or below this are confidently clean.
        high: Probabilities at or above this are confidently defect.
        max_uncertain: Largest share of pixels in between for an image to be kept.
        copy: Copy the images instead of linking to them.
        progress: Show a progress bar.

    Returns:
        The summary also written to ``out/pseudo.json``.

    Raises:
        ValueError: bad thresholds, no images, or ``out`` is a non-empty folder that is not
            an earlier pseudo-label set.
    """
    from tqdm import tqdm

    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    if not 0.0 <= max_uncertain <= 1.0:
        raise ValueError(f"max_uncertain must be a fraction in [0, 1], got {max_uncertain}")
    out = Path(out)
    check_out_folder(out)
    if out.exists() and any(out.iterdir()) and not (out / "pseudo.json").exists():
        raise ValueError(
            f"{out} is not empty and not an earlier steelseg-pseudo output; choose another --out"
        )
    sources, empty = collect_inputs([str(i) for i in images])
    if not sources:
        raise ValueError(f"no images found in {', '.join(map(str, images))}")
    skipped = {text: "no image file matches it" for text in empty}
    scores, labels, kept = [], [], {}
    bar = tqdm(total=len(sources), unit="img", desc="pseudo", disable=None if progress else True)
    for lo in range(0, len(sources), predictor.batch_size):
        batch, grey = [], []
        for s in sources[lo : lo + predictor.batch_size]:
            try:
                image = read_grey(s.path)
                if image.shape != rle.SHAPE:
                    raise ValueError(
                        f"{s.path} is {image.shape[1]}x{image.shape[0]}; training takes "
                        f"{rle.SHAPE[1]}x{rle.SHAPE[0]} images only"
                    )
                if s.image_id in kept or any(s.image_id == b.image_id for b in batch):
                    raise ValueError(f"{s.path}: a second image named {s.image_id}")
                batch.append(s)
                grey.append(image)
            except ValueError as e:
                skipped[str(s.path)] = str(e)
                tqdm.write(f"steelseg-pseudo: skipped {e}", file=sys.stderr)
        probs = predictor.predict_proba(grey) if grey else []
        for s, prob in zip(batch, probs):
            frac = uncertain_fraction(prob, low, high)
            mask = predictor.postprocess.apply(prob)
            keep = frac <= max_uncertain
            scores.append((s.image_id, frac, keep, int(mask.sum())))
            if keep:
                kept[s.image_id] = s.path
                encoded = rle.encode(mask)
                if encoded:
                    labels.append((s.image_id, rle.ANY_CLASS, encoded))
        bar.update(len(sources[lo : lo + predictor.batch_size]))
    bar.close()
    summary = {
        "images": len(scores),
        "kept": len(kept),
        "kept_with_defect": len(labels),
        "low": low,
        "high": high,
        "max_uncertain": max_uncertain,
        "postprocess": predictor.postprocess.to_dict(),
        "tta": list(predictor.tta),
        "class_id": rle.ANY_CLASS,
        "images_linked": not copy,
        "skipped": skipped,
    }
    _write_folder(out, kept, labels, scores, summary, copy)
    return summary


def _write_folder(
    out: Path,
    kept: dict[str, Path],
    labels: list[tuple[str, int, str]],
    scores: list[tuple[str, float, bool, int]],
    summary: dict,
    copy: bool,
) -> None:
    """Build the folder beside ``out`` and swap it in, so ``out`` is never half written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        images = tmp / "train_images"
        images.mkdir()
        for image_id, src in kept.items():
            if copy:
                shutil.copyfile(src, images / image_id)
            else:  # absolute, so the folder can be read from anywhere
                os.symlink(src.resolve(), images / image_id)
        train = pd.DataFrame(labels, columns=["ImageId", "ClassId", "EncodedPixels"])
        atomic_write_text(tmp / "train.csv", train.to_csv(index=False))
        table = pd.DataFrame(
            scores, columns=["ImageId", "uncertain_fraction", "kept", "defect_pixels"]
        )
        atomic_write_text(tmp / "scores.csv", table.to_csv(index=False))
        atomic_write_text(tmp / "pseudo.json", json.dumps(summary, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> None:
    """``steelseg-pseudo CHECKPOINT IMAGES... --out DIR``; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="steelseg-pseudo",
        description="Pseudo-label unlabelled images with a steelseg checkpoint: keep the "
        "confident ones as a Kaggle-layout folder (train.csv with ClassId 0 = any class, "
        "train_images/) to add with data.extra_roots=[DIR]. Exit code 3 when an input was "
        "skipped, 2 on an error.",
    )
    p.add_argument("checkpoint", type=Path, help="a steelseg .ckpt file")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="output folder (Kaggle layout)")
    p.add_argument("--low", type=float, default=0.2, help="confidently clean at or below (0.2)")
    p.add_argument("--high", type=float, default=0.8, help="confident defect at or above (0.8)")
    p.add_argument(
        "--max-uncertain",
        type=float,
        default=0.0,
        help="largest share of pixels between low and high for an image to be kept (0)",
    )
    p.add_argument("--threshold", type=float, help="mask threshold (default: tuned or model's)")
    p.add_argument("--copy", action="store_true", help="copy images instead of linking them")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--tta", help="flips averaged in, comma-separated: hflip,vflip")
    p.add_argument("--no-tuned", action="store_true", help="ignore tuned post-processing")
    args = p.parse_args(argv)
    try:
        tta = [t for t in (args.tta or "").split(",") if t.strip() and t.strip() != "none"]
        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            args.device,
            tta=[t.strip() for t in tta] if args.tta is not None else None,
            batch_size=args.batch_size,
            use_tuned=not args.no_tuned,
        )
        if args.threshold is not None:
            predictor.postprocess = replace(predictor.postprocess, threshold=args.threshold)
        summary = pseudo_label(
            predictor, args.images, args.out, args.low, args.high, args.max_uncertain, args.copy
        )
    except (ValueError, OSError) as e:
        print(f"steelseg-pseudo: error: {e}", file=sys.stderr)
        sys.exit(2)
    skipped = summary["skipped"]
    print(
        f"steelseg-pseudo: kept {summary['kept']} of {summary['images']} image(s) "
        f"({summary['kept_with_defect']} with a defect) in {args.out}; {len(skipped)} skipped. "
        f"Train with: '++data.extra_roots=[{args.out}]'"
    )
    sys.exit(3 if skipped else 0)


if __name__ == "__main__":
    main()
