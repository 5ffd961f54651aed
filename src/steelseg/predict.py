"""Inference: a trained checkpoint applied to numpy images (notebook API) and image files (CLI).

Notebook use, no Hydra needed::

    from steelseg.predict import Predictor, read_grey

    predictor = Predictor.from_checkpoint("outputs/train/runs/<time>/checkpoints/last.ckpt")
    image = read_grey("data/severstal/train_images/0002cc93b.jpg")  # uint8 (256, 1600)
    prob = predictor.predict_proba(image)                          # float32 (256, 1600)
    mask = predictor.predict(image)                                # bool (256, 1600)

Each image is resized to the size the model was trained at (``hparams.input_size``), run in
batches (with flip test-time augmentation when asked), and its probability map resized back
(bilinear) to the image's own size before post-processing (:mod:`steelseg.postprocess`).

Command line: ``steelseg-predict CHECKPOINT INPUT... --out DIR`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from steelseg import checkpoint as ckpt_io
from steelseg import rle
from steelseg.model import SteelSegModule
from steelseg.postprocess import (
    TTA_CHOICES,
    PostProcess,
    add_cli_args,
    check_tta,
    cli_overrides,
    load_tuned,
    parse_tta,
)
from steelseg.prepare import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["TTA_CHOICES", "Predictor", "load_module", "read_grey", "main"]

STRIDE = 32  # the encoders downsample 5 times: network inputs are multiples of 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- loading
def load_module(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> SteelSegModule:
    """Load a steelseg checkpoint into an eval-mode :class:`SteelSegModule` on ``device``.

    The file is read weights-only (tensors and plain values; nothing in it can run). A
    checkpoint that needs full unpickling is refused unless ``trust_checkpoint``: a pickle
    from a stranger is code, so pass it only for files you trust.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a PyTorch checkpoint, needs unsafe loading, or was not
            written by steelseg.
    """
    path = Path(checkpoint)
    ckpt = ckpt_io.load(path, "cpu", weights_only=not trust_checkpoint)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not {"arch", "encoder_name"} <= set(hp) or state is None:
        raise ValueError(
            f"{path} is not a steelseg checkpoint (no steelseg hyper-parameters and weights); "
            "pass the .ckpt file from a steelseg-train run's checkpoints/ folder"
        )
    try:
        module = SteelSegModule(**{**hp, "encoder_weights": None})  # the weights are all here
        module.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} does not match this steelseg version's model: {e}") from None
    return module.eval().to(device)


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 grey (H, W).

    Raises:
        ValueError: the file is missing, not an image, unreadable, or a truncated JPEG (which
            OpenCV would otherwise decode silently with grey filler); the message names it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ValueError(f"cannot read {path}: truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if img is None:
        raise ValueError(f"cannot read {path}: not an image, or a damaged one")
    return img


# ----------------------------------------------------------------------------- predictor
def _as_images(images: Any) -> tuple[list[np.ndarray], bool]:
    """Normalise the accepted inputs to a list of 2-D grey arrays; also say if one was given."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4)):
            return [_grey(images)], True
        if images.ndim in (3, 4):
            return [_grey(a) for a in images], False
        raise ValueError(
            f"images must be (H, W), (H, W, 3), (N, H, W) or a list of images, got shape "
            f"{images.shape}"
        )
    if isinstance(images, torch.Tensor):
        raise ValueError("images must be numpy arrays (convert with tensor.cpu().numpy())")
    return [_grey(np.asarray(a)) for a in images], False


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):  # OpenCV's BGR(A), as cv2.imread gives
        image = cv2.cvtColor(
            image, cv2.COLOR_BGRA2GRAY if image.shape[-1] == 4 else cv2.COLOR_BGR2GRAY
        )
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"each image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.float32)  # the model takes 0..255 floats too
    return image


class Predictor:
    """A trained model with its input size, post-processing and test-time augmentation.

    Args:
        module: A trained :class:`SteelSegModule`.
        device: Where to run; None: CUDA when available, else CPU.
        postprocess: How probabilities become masks; None: a threshold at the module's.
        tta: Flips to average with the plain prediction, from :data:`TTA_CHOICES`.
        batch_size: Images per forward pass.
        bf16: Run under bf16 autocast; None: on a CUDA GPU that supports it (as training does),
            fp32 elsewhere. Probabilities are always returned as float32.
    """

    def __init__(
        self,
        module: SteelSegModule,
        device: str | torch.device | None = None,
        postprocess: PostProcess | None = None,
        tta: Sequence[str] = (),
        batch_size: int = 8,
        bf16: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _device(device)
        self.module = module.eval().to(self.device)
        if module.use_channels_last(self.device):  # as in training: NHWC convolutions on CUDA
            self.module.net.to(memory_format=torch.channels_last)
        if bf16 is None:
            bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = bool(bf16)
        size = module.hparams.get("input_size")
        self.input_size: tuple[int, int] | None = tuple(int(v) for v in size) if size else None
        self.postprocess = postprocess or PostProcess(threshold=float(module.hparams.threshold))
        self.tta = check_tta(tta)
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        device: str | torch.device | None = None,
        postprocess: PostProcess | None = None,
        tta: Sequence[str] | None = None,
        batch_size: int = 8,
        use_tuned: bool = True,
        trust_checkpoint: bool = False,
    ) -> Predictor:
        """Load a checkpoint once; post-processing and TTA default to the tuned ones.

        ``postprocess`` / ``tta`` left None take the values ``steelseg-tune`` stored beside the
        checkpoint (:func:`steelseg.postprocess.load_tuned`) when present and ``use_tuned``;
        otherwise a threshold at the module's and no TTA. ``trust_checkpoint`` allows
        checkpoints that need full (code-running) unpickling; see :func:`load_module`.
        """
        device = _device(device)
        module = load_module(checkpoint, device, trust_checkpoint)
        tuned = load_tuned(checkpoint) if use_tuned else None
        if postprocess is None and tuned is not None:
            postprocess = tuned[0]
        if tta is None:
            tta = tuned[1] if tuned is not None else ()
        return cls(module, device, postprocess, tta, batch_size)

    # ------------------------------------------------------------------ inference
    def _network_input(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape
        if self.input_size is not None:
            th, tw = self.input_size
            if (h, w) == (th, tw):
                return image
            # INTER_AREA, as the training cache was made (steelseg.prepare.load_sample)
            return cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        ph, pw = -h % STRIDE, -w % STRIDE  # no trained size: pad to a multiple of 32
        return (
            cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101) if ph or pw else image
        )

    def _back(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        if self.input_size is None:
            return np.ascontiguousarray(prob[:h, :w])
        if prob.shape == (h, w):
            return prob
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """TTA-averaged probabilities of a (N, h, w) batch at network size."""
        x = torch.from_numpy(batch)[:, None].to(self.device, non_blocking=True)  # (N, 1, h, w)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            prob = self.module(x).float().sigmoid()
            for name in self.tta:
                dim = -1 if name == "hflip" else -2
                prob += self.module(x.flip(dim)).float().sigmoid().flip(dim)
        prob /= 1 + len(self.tta)
        return prob[:, 0].float().cpu().numpy()  # (N, h, w)

    def predict_proba(self, images: Any) -> np.ndarray | list[np.ndarray]:
        """Defect probabilities of each pixel, at each image's own size.

        Args:
            images: One uint8 grey (H, W) or BGR (H, W, 3) image, a sequence of them, or an
                (N, H, W) array.

        Returns:
            float32 (H, W) for one image; (N, H, W) for several of one size; a list of
            (H, W) arrays for several sizes.
        """
        grey, single = _as_images(images)
        net = [self._network_input(g) for g in grey]
        out: list[np.ndarray | None] = [None] * len(grey)
        by_shape: dict[tuple[tuple[int, int], np.dtype], list[int]] = {}
        for i, a in enumerate(net):
            by_shape.setdefault((a.shape, a.dtype), []).append(i)
        for idx in by_shape.values():
            for lo in range(0, len(idx), self.batch_size):
                part = idx[lo : lo + self.batch_size]
                probs = self._forward(np.stack([net[i] for i in part]))
                for i, p in zip(part, probs):
                    out[i] = self._back(p, grey[i].shape)
        if single:
            return out[0]
        if out and len({p.shape for p in out}) == 1:
            return np.stack(out)
        return list(out) if out else np.zeros((0, 0, 0), np.float32)

    def predict(
        self, images: Any, postprocess: PostProcess | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Binary defect masks, shaped as :meth:`predict_proba`'s output (bool).

        Args:
            images: As for :meth:`predict_proba`.
            postprocess: Overrides this predictor's post-processing for this call.
        """
        pp = postprocess or self.postprocess
        probs = self.predict_proba(images)
        return [pp.apply(p) for p in probs] if isinstance(probs, list) else pp.apply(probs)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available; use cpu")
    return device


# ----------------------------------------------------------------------------- files
@dataclass
class Source:
    """One input image: its file, its ImageId (file name) and the train.csv that labels it."""

    path: Path
    image_id: str
    labels: Path | None = None  # train.csv of a Kaggle-layout folder; images not in it are clean


def _kaggle_labels(folder: Path) -> Path | None:
    """train.csv beside a Kaggle ``train_images/`` folder, if any."""
    csv = folder.parent / "train.csv"
    return csv if folder.name == "train_images" and csv.is_file() else None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Source], list[str]]:
    """Expand image files, folders and globs into image sources.

    A folder holding ``train_images/`` (a Kaggle-layout folder) means its train images, with
    ground truth from its ``train.csv``; one holding only ``test_images/`` means those. Files
    in a folder are taken by image suffix; files named or matched by a glob are all tried.

    Returns:
        The sources in order (duplicate files once), and the inputs that matched nothing.
    """
    found: list[Source] = []
    empty: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            folder = path
            if (path / "train_images").is_dir():
                folder = path / "train_images"
            elif (path / "test_images").is_dir() and not _images_in(path):
                folder = path / "test_images"
            labels = _kaggle_labels(folder)
            new = [Source(p, p.name, labels) for p in _images_in(folder)]
        elif path.is_file():
            new = [Source(path, path.name, _kaggle_labels(path.parent))]
        else:
            matches = sorted(Path(m) for m in glob.glob(text) if Path(m).is_file())
            new = [Source(m, m.name, _kaggle_labels(m.parent)) for m in matches]
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


def check_out_folder(folder: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be made: it, or a folder above it, is a file.

    Raises:
        ValueError: naming the file in the way and the option to change.
    """
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(
                    f"cannot write {folder}: {path} is a file, not a folder; choose another "
                    f"{option}"
                )
            return


def write_png(path: Path, image: np.ndarray) -> None:
    """Save an image as PNG atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())


# ----------------------------------------------------------------------------- pictures
PRED_BGR = (0, 0, 255)  # red: predicted defect
TRUE_BGR = (0, 255, 0)  # green: ground-truth outline on the overlay
LABEL_HEIGHT = 28  # pixels of the caption bar above each panel


def overlay(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The image in grey with the predicted mask tinted red (and the true outline in green).

    Returns:
        uint8 BGR (H, W, 3).
    """
    bgr = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    m = mask.astype(bool)
    tint = np.array(PRED_BGR, dtype=np.float32)
    bgr[m] = (0.55 * bgr[m] + 0.45 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(bgr, contours, -1, PRED_BGR, 1)
    if truth is not None and truth.any():
        contours, _ = cv2.findContours(
            truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(bgr, contours, -1, TRUE_BGR, 2)
    return bgr


def _captioned(panel: np.ndarray, text: str) -> np.ndarray:
    if panel.ndim == 2:
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2BGR)
    bar = np.full((LABEL_HEIGHT, panel.shape[1], 3), 32, dtype=np.uint8)
    cv2.putText(bar, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def four_panel(image: np.ndarray, mask: np.ndarray, truth: np.ndarray, title: str) -> np.ndarray:
    """The seed demo's picture, stacked vertically: original / predicted / overlay / truth.

    Returns:
        uint8 BGR (4 * (H + 28), W, 3).
    """
    m, t = mask.astype(bool), truth.astype(bool)
    inter, total = int((m & t).sum()), int(m.sum() + t.sum())
    dice = 1.0 if total == 0 else 2 * inter / total  # Kaggle rule: empty and empty scores 1
    panels = [
        (image.astype(np.uint8), f"{title}: original"),
        (m.astype(np.uint8) * 255, f"predicted mask ({int(m.sum())} px)"),
        (overlay(image, m, t), "overlay: predicted red, ground-truth outline green"),
        (t.astype(np.uint8) * 255, f"ground truth ({int(t.sum())} px), Dice {dice:.3f}"),
    ]
    return np.vstack([_captioned(p, text) for p, text in panels])


# ----------------------------------------------------------------------------- CLI
class _Truth:
    """Ground-truth masks from the train.csv files of Kaggle-layout inputs, read once each."""

    def __init__(self) -> None:
        self.tables: dict[Path, Any] = {}

    def load(self, sources: Sequence[Source]) -> None:
        """Read (and validate) every train.csv first, so a bad one stops the run early."""
        for csv in dict.fromkeys(s.labels for s in sources if s.labels is not None):
            self.tables[csv] = rle.read_annotations(csv, any_class=True)

    def mask(self, source: Source, shape: tuple[int, int]) -> np.ndarray | None:
        if source.labels is None or shape != rle.SHAPE:
            return None  # the RLE of train.csv is at 256x1600
        return rle.image_mask(self.tables[source.labels], source.image_id).astype(bool)


def _batches(sources: Sequence[Source], size: int) -> Iterator[list[Source]]:
    for lo in range(0, len(sources), size):
        yield list(sources[lo : lo + size])


def _parse_tta(text: str) -> tuple[str, ...]:
    try:
        return parse_tta(text)
    except ValueError as e:  # argparse names the option itself
        raise argparse.ArgumentTypeError(str(e).removeprefix("--tta: ")) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steelseg-predict",
        description="Predict defect masks with a steelseg checkpoint. Writes OUT/masks/<id>.png "
        "(0/255), OUT/overlays/<id>.png, OUT/panels/<id>.png (when ground truth is known: a "
        "Kaggle-layout folder or its train_images/ with train.csv beside it), "
        "OUT/predictions.csv (ImageId,ClassId,EncodedPixels; ClassId 0 = any defect class, "
        "EncodedPixels empty for no defect) and OUT/predict.json. Exit code 3 when an input "
        "was skipped, 2 on a usage or checkpoint error.",
    )
    p.add_argument("checkpoint", type=Path, help="a steelseg .ckpt file")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, folder (or Kaggle-layout folder) or quoted glob such as 'dir/*.jpg'",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    g = add_cli_args(
        p,
        "post-processing (default: the values steelseg-tune stored with the checkpoint, else "
        "only the model's threshold); each option given replaces that one value",
    )
    g.add_argument(
        "--tta",
        type=_parse_tta,
        help=f"flips averaged with the plain prediction, comma-separated from {list(TTA_CHOICES)}, "
        "or 'none'",
    )
    g.add_argument(
        "--no-tuned",
        action="store_true",
        help="ignore the tuned post-processing stored beside the checkpoint",
    )
    p.add_argument(
        "--masks-only", action="store_true", help="write masks and the CSV, no overlays or panels"
    )
    return p


def run(args: argparse.Namespace) -> int:
    """The body of ``steelseg-predict`` once arguments are parsed; returns the exit code."""
    from tqdm import tqdm

    sources, empty = collect_inputs(args.inputs)
    for text in empty:
        print(f"steelseg-predict: skipped {text}: no image file matches it", file=sys.stderr)
    if not sources:
        print("steelseg-predict: error: no input images found", file=sys.stderr)
        return 2
    check_out_folder(args.out)
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        args.device,
        tta=args.tta,
        batch_size=args.batch_size,
        use_tuned=not args.no_tuned,
    )
    changes = cli_overrides(args)
    pp = replace(predictor.postprocess, **changes) if changes else predictor.postprocess
    out: Path = args.out
    truth = _Truth()
    truth.load(sources)
    skipped: dict[str, str] = {s: "no image file matches it" for s in empty}
    rows: list[tuple[str, str]] = []
    stems: dict[str, Path] = {}
    n_panels, start = 0, time.perf_counter()
    with tqdm(total=len(sources), unit="img", desc="predict", disable=None) as bar:
        for batch in _batches(sources, args.batch_size):
            good, images = [], []
            for s in batch:
                stem = Path(s.image_id).stem
                try:
                    if stem in stems:
                        raise ValueError(
                            f"{s.path}: same name as {stems[stem]} (outputs would collide); "
                            "predict the two folders into different --out folders"
                        )
                    images.append(read_grey(s.path))
                    stems[stem] = s.path
                    good.append(s)
                except ValueError as e:
                    skipped[str(s.path)] = str(e)
                    tqdm.write(f"steelseg-predict: skipped {e}", file=sys.stderr)
            probs = predictor.predict_proba(images) if images else []
            for s, image, prob in zip(good, images, probs):
                mask = pp.apply(prob)
                stem = Path(s.image_id).stem
                write_png(out / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
                rows.append((s.image_id, rle.encode(mask)))
                if args.masks_only:
                    continue
                gt = truth.mask(s, image.shape)
                write_png(out / "overlays" / f"{stem}.png", overlay(image, mask, gt))
                if gt is not None:
                    write_png(
                        out / "panels" / f"{stem}.png", four_panel(image, mask, gt, s.image_id)
                    )
                    n_panels += 1
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    _write_csv(out / "predictions.csv", rows)
    summary = {
        "checkpoint": str(args.checkpoint),
        "device": str(predictor.device),
        "input_size": predictor.input_size,
        "postprocess": pp.to_dict(),
        "tta": list(predictor.tta),
        "images": len(rows),
        "with_defect": sum(1 for _, r in rows if r),
        "panels": n_panels,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "skipped": skipped,
    }
    atomic_write_text(out / "predict.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"steelseg-predict: {len(rows)} image(s) predicted ({summary['with_defect']} with a "
        f"defect, {n_panels} with ground truth) into {out}; {len(skipped)} skipped"
        + (
            f" ({', '.join(Path(k).name for k in list(skipped)[:5])}{' ...' if len(skipped) > 5 else ''})"
            if skipped
            else ""
        )
    )
    return 3 if skipped else 0


def _write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """``ImageId,ClassId,EncodedPixels``: one row per image, ClassId 0 (any class)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"])
    df.insert(1, "ClassId", rle.ANY_CLASS)
    atomic_write_text(path, df.to_csv(index=False))


def main(argv: list[str] | None = None) -> None:
    """``steelseg-predict CHECKPOINT INPUT... --out DIR``; see ``--help``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.batch_size < 1:
        print(
            f"steelseg-predict: error: --batch-size must be >= 1, got {args.batch_size}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        code = run(args)
    except (ValueError, OSError) as e:
        print(f"steelseg-predict: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
