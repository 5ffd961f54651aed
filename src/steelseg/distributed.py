"""Archive-scale prediction on Ray: the same :class:`~steelseg.predict.Predictor` as Ray Data
actors (``steelseg-predict ... --engine ray``; docs/scale.md).

:class:`RayEngine` stands in for :meth:`Predictor.predict_files` in
:func:`steelseg.writer.predict_to_folder`: a Ray Data dataset of the image paths (a row per
model batch: a local run's batches) goes through ``map_batches`` to a pool of actors, each of
which loads the model once (:func:`steelseg.deploy.load_predictor`, with the runtime,
precision, device, flips and batch size the driver's predictor resolved) and runs
:meth:`Predictor.predict_files` on its batches: the actors read the images. Each readable
image comes back, in input order, as its image and probabilities (what the writer's
post-processing, pictures and COCO scores need), so the driver writes exactly what a local run
writes, with the local run's code.

Ray is an optional extra (``pip install 'steelseg[ray]'``): this module imports it only when a
run starts, and ``import steelseg`` or a local run never does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steelseg.inputs import Source, log_skip
from steelseg.predict import Prediction, Predictor

RAY_INSTALL = "pip install 'steelseg[ray]'"

#: what an actor sends back for each image, beside its index and skip reason: the
#: :class:`Prediction` fields, each an array (a zero-size one for a skipped image)
FIELDS = ("image", "prob", "plain", "image_prob", "plain_image_prob")


def require_ray() -> Any:
    """Import and return ``ray`` (with ``ray.data``); one line naming the extra when missing.

    Raises:
        ValueError: Ray is not installed here.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (the engine's half of ray[data])
    except ImportError as e:
        raise ValueError(
            f"--engine ray needs Ray Data, which is not installed here ({e}); install it "
            f"with: {RAY_INSTALL}"
        ) from None
    return ray


@dataclass
class RayEngine:
    """Runs a predictor's :meth:`~Predictor.predict_files` on Ray Data actors.

    Pass :meth:`predict_files` as :func:`steelseg.writer.predict_to_folder`'s
    ``predict_files``. Each actor loads the model once with ``load_predictor(model,
    **options)``, its runtime, precision, device, flips and batch size replaced by those of the
    predictor it is asked to stand in for (so ``auto`` is resolved once, on the driver, and
    every actor runs the same model).

    Args:
        model: The checkpoint or exported file, at a path every Ray node can read.
        options: :func:`steelseg.deploy.load_predictor`'s keyword arguments
            (:func:`steelseg.cli.common.predictor_options`).
        address: The Ray cluster to attach to (``auto``, ``ray://host:10001``, ...); None:
            the one this process is already connected to, else a new local Ray on this
            machine's CPUs, shut down after the run.
        actors: Actors in the pool; None: one per CPU of the cluster (one per GPU when the
            model runs on CUDA).
    """

    model: str | os.PathLike
    options: Mapping[str, Any] = field(default_factory=dict)
    address: str | None = None
    actors: int | None = None

    def predict_files(
        self,
        predictor: Predictor,
        sources: Sequence[Source],
        check: Callable[[Source, np.ndarray], None] | None = None,
        on_skip: Callable[[Source, str], None] = log_skip,
        with_plain: bool = False,
        progress: bool | None = None,
    ) -> Iterator[Prediction]:
        """:meth:`Predictor.predict_files` on the actors: one :class:`Prediction` per
        readable image, in order; an unreadable one is told to ``on_skip``.

        ``check`` runs here, on the driver, as each image comes back (after its prediction,
        not before as in a local run: an image it refuses has cost one prediction).
        """
        ray = require_ray()
        started = not ray.is_initialized()
        if started:
            _start(ray, self.address)
        try:
            yield from self._run(
                ray, predictor, list(sources), check, on_skip, with_plain, progress
            )
        except ray.exceptions.RayActorError as e:  # e.g. the model cannot load on a node
            cause = str(e).strip().splitlines()[-1]
            raise ValueError(
                f"a Ray actor died: {cause} (MODEL {self.model} and the INPUT images must be "
                "readable at the same paths on every Ray node)"
            ) from None
        finally:
            if started:
                ray.shutdown()

    def _run(
        self,
        ray: Any,
        predictor: Predictor,
        sources: list[Source],
        check: Callable[[Source, np.ndarray], None] | None,
        on_skip: Callable[[Source, str], None],
        with_plain: bool,
        progress: bool | None,
    ) -> Iterator[Prediction]:
        """The dataset of paths through the actors, and each image back as a Prediction."""
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run execution plans
        gpu = str(predictor.device).startswith("cuda")
        actors = self.actors or max(1, int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))
        options = {
            **self.options,
            "runtime": predictor.runtime,
            "precision": predictor.precision,
            "device": predictor.device,
            "tta": tuple(predictor.tta),
            "batch_size": predictor.batch_size,
            "progress": False,
        }
        fields = _fields(predictor, with_plain)
        ds = _batches(ray, sources, predictor.batch_size)
        actors = min(actors, ds.count())  # no idle actors on a short run
        ds.context.execution_options.preserve_order = True  # rows come back in input order
        ds.context.enable_progress_bars = sys.stderr.isatty() if progress is None else progress
        ds = ds.map_batches(
            _PredictActor,
            fn_constructor_kwargs={
                "model": str(self.model),
                "options": options,
                "with_plain": with_plain,
                "fields": fields,
            },
            batch_size=1,  # a row is a model batch
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,  # Ray sets the actor's OMP_NUM_THREADS to it: torch runs one thread
            num_gpus=1 if gpu else 0,
        )
        for row in ds.iter_rows():
            s = sources[int(row["index"])]
            if row["reason"]:
                on_skip(s, str(row["reason"]))
                continue
            values = {f: np.array(row[f]) for f in fields}  # writable copies of Arrow's views
            if check is not None:
                try:
                    check(s, values["image"])
                except ValueError as e:
                    on_skip(s, str(e))
                    continue
            yield Prediction(s, **values)


def _start(ray: Any, address: str | None) -> None:
    """Attach to the cluster at ``address``, or start a local Ray on this machine's CPUs;
    quietly (warnings only, no dashboard)."""
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)


def _batches(ray: Any, sources: Sequence[Source], batch_size: int) -> Any:
    """A dataset of one row per model batch, ``{"index": [...], "path": [...]}`` of
    ``batch_size`` consecutive images: each forward pass of an actor holds the images a local
    run's does (the same numbers, bit for bit)."""
    n = len(sources)
    return ray.data.from_items(
        [
            {
                "index": list(range(lo, min(lo + batch_size, n))),
                "path": [str(s.path) for s in sources[lo : lo + batch_size]],
            }
            for lo in range(0, n, batch_size)
        ]
    )


def _fields(predictor: Predictor, with_plain: bool) -> dict[str, tuple[int, str]]:
    """The :data:`FIELDS` this run sends back, each with its ndim and dtype."""
    prob_ndim = 2 if predictor.classes == 1 else 3  # (H, W) or (C, H, W)
    fields = {"image": (2, "uint8"), "prob": (prob_ndim, "float32")}
    if with_plain:
        fields["plain"] = (prob_ndim, "float32")
    if predictor.gated:
        fields["image_prob"] = (1, "float32")
        if with_plain:
            fields["plain_image_prob"] = (1, "float32")
    return fields


class _PredictActor:
    """A Ray Data actor: loads the predictor once, then predicts each batch of paths it is
    given (reading the images itself)."""

    def __init__(
        self,
        model: str,
        options: dict[str, Any],
        with_plain: bool,
        fields: dict[str, tuple[int, str]],
    ) -> None:
        from steelseg.deploy import load_predictor

        self.predictor = load_predictor(model, **options)
        self.with_plain, self.fields = with_plain, fields

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        """Rows of model batches (:func:`_batches`) -> a row per image: its index, why it was
        skipped ("" when predicted) and its :data:`FIELDS` (zero-size when skipped)."""
        got: dict[str, Prediction | str] = {}  # by image_id, which here holds the index

        def skip(s: Source, reason: str) -> None:
            got[s.image_id] = reason

        order: list[Source] = []
        for indices, paths in zip(rows["index"], rows["path"]):
            batch = [Source(Path(p), str(i)) for i, p in zip(indices, paths)]
            for p in self.predictor.predict_files(batch, on_skip=skip, with_plain=self.with_plain):
                got[p.source.image_id] = p
            order += batch
        results = [got[s.image_id] for s in order]
        out: dict[str, Any] = {
            "index": np.array([int(s.image_id) for s in order], np.int64),
            "reason": np.array([r if isinstance(r, str) else "" for r in results], dtype=object),
        }
        for name, (ndim, dtype) in self.fields.items():
            empty = np.zeros((0,) * ndim, dtype)  # a skipped image's placeholder
            out[name] = [empty if isinstance(r, str) else getattr(r, name) for r in results]
        return out
