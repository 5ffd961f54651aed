"""Compare the runs of a sweep: ``summary.csv``, ``summary.md`` and ``summary.png``.

A run folder holds ``config.yaml`` and, once the job has ended, ``metrics.json`` (written by
:func:`steelseg.train.train`) or ``failed.json`` (written by ``steelseg-train -m`` when the job
raised, see :mod:`steelseg.sweep`); Hydra adds ``.hydra/overrides.yaml``. :func:`collect` reads
them into one table, one row per run, best first by the optimised metric, failed runs last with
their error; :func:`write_summary` writes the three files. :class:`SweepSummary` (a Hydra callback,
``conf/hydra/default.yaml``) does both at the end of every multirun, and ``steelseg-compare
DIR...`` rebuilds the report later from sweep folders or run folders::

    steelseg-compare outputs/train/multiruns/2024-05-01_10-00-00

With a swept parameter, :func:`write_curve` adds ``curve.csv``, ``curve.md`` and ``curve.png``:
the metric against that parameter (e.g. a learning curve over ``data.train_fraction``)::

    steelseg-compare outputs/train/multiruns/2024-05-01_10-00-00 --curve data.train_fraction
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from steelseg.io import atomic_write, atomic_write_text
from steelseg.metric import HEADLINE
from steelseg.sweep import FAILED_FILE

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
#: the metrics of a row, in table order (metrics.json keys; any others follow them in the CSV)
METRICS = (
    *HEADLINE,
    "epochs",
    "fit_seconds",
    "job_seconds",
    "train_images_per_s",
    "params",
)
#: markdown heading and number format of each column of summary.md
MD_COLUMNS = {
    "job": ("job", "{}"),
    "status": ("status", "{}"),
    "changes": ("overrides", "{}"),
    "val/iou": ("val IoU", "{:.4f}"),
    "val/dice": ("val Dice", "{:.4f}"),
    "val/dice_per_image": ("val Dice/img", "{:.4f}"),
    "test/iou": ("test IoU", "{:.4f}"),
    "test/dice": ("test Dice", "{:.4f}"),
    "test/dice_per_image": ("test Dice/img", "{:.4f}"),
    "epochs": ("epochs", "{:.0f}"),
    "fit_seconds": ("fit s", "{:.0f}"),
    "job_seconds": ("job s", "{:.0f}"),
    "train_images_per_s": ("train img/s", "{:.1f}"),
    "params": ("params M", "{:.2f}"),
    "error": ("error", "{}"),
}
#: numbers of the run's newest full-resolution evaluation of its test split
#: (``<run>/eval/*-test/eval.json``, written by ``steelseg-eval``): column -> (variant, path)
EVAL_COLUMNS = {
    "eval/mIoU": ("postprocessed", ("segmentation", "mIoU")),
    "eval/iou": ("postprocessed", ("pixel", "iou")),
    "eval/dice": ("postprocessed", ("pixel", "dice")),
    "eval/dice_per_image": ("postprocessed", ("pixel", "dice_per_image")),
    "eval/kaggle_dice": ("postprocessed", ("kaggle_dice",)),
    "eval/defect_recall": ("postprocessed", ("defect", "recall")),
    "eval/small_defect_recall": ("postprocessed", ("defect", "small_recall")),
    "eval/specificity": ("postprocessed", ("image", "specificity")),
    "eval_plain/dice_per_image": ("threshold_only", ("pixel", "dice_per_image")),
    "eval_plain/kaggle_dice": ("threshold_only", ("kaggle_dice",)),
    "eval_plain/specificity": ("threshold_only", ("image", "specificity")),
}
MD_COLUMNS |= {
    "eval/mIoU": ("eval mIoU", "{:.4f}"),
    "eval/iou": ("eval IoU", "{:.4f}"),
    "eval/dice": ("eval Dice", "{:.4f}"),
    "eval/dice_per_image": ("eval Dice/img", "{:.4f}"),
    "eval/kaggle_dice": ("eval Kaggle", "{:.4f}"),
    "eval/defect_recall": ("eval defect recall", "{:.3f}"),
    "eval/small_defect_recall": ("eval recall <2000 px", "{:.3f}"),
    "eval/specificity": ("eval clean kept clean", "{:.3f}"),
    "eval_plain/dice_per_image": ("threshold-only Dice/img", "{:.4f}"),
    "eval_plain/kaggle_dice": ("threshold-only Kaggle", "{:.4f}"),
    "eval_plain/specificity": ("threshold-only clean kept clean", "{:.3f}"),
}
SKIP_DIRS = {"checkpoints", "csv", "tensorboard", "eval"}  # inside a run folder, never runs


# ----------------------------------------------------------------------------- finding runs
def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is the folder of one run (ended, failed or still running)."""
    return any(
        (path / name).is_file()
        for name in (METRICS_FILE, FAILED_FILE, "config.yaml", ".hydra/overrides.yaml")
    )


def find_runs(paths: Iterable[str | os.PathLike], max_depth: int = 4) -> list[Path]:
    """Run folders in ``paths``: each path is a run folder or holds some below it.

    Raises:
        FileNotFoundError: a path does not exist or is not a folder.
    """
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if is_run_dir(folder):
            found.append(folder)
            return
        if depth == max_depth:
            return
        for sub in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
            hidden = sub.name.startswith(".") or sub.name in SKIP_DIRS
            if sub.is_dir() and not sub.is_symlink() and not hidden:
                walk(sub, depth + 1)

    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a folder; give sweep folders (outputs/<task>/multiruns/<time>) "
                "or run folders"
            )
        walk(path, 0)
    return list(dict.fromkeys(p.resolve() for p in found))  # once each, in order


def _natural(text: str) -> list:
    """Sort key that puts job 2 before job 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# ----------------------------------------------------------------------------- one run
def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row: status, overrides, model, metrics (or the error) of a run folder."""
    config = _load_yaml(run_dir / "config.yaml") or {}
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    model = config.get("model") or {}
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "overrides": " ".join(map(str, overrides)),
        "arch": model.get("arch"),
        "encoder": model.get("encoder_name"),
        "optimized_metric": config.get("optimized_metric"),
        "error": "",
    }
    metrics_path, failed_path = run_dir / METRICS_FILE, run_dir / FAILED_FILE
    # a folder used twice (a rerun into the same folder) reports its latest outcome
    ended = [p for p in (metrics_path, failed_path) if p.is_file()]
    latest = max(ended, key=lambda p: p.stat().st_mtime) if ended else None
    try:
        if latest == metrics_path:
            report = json.loads(metrics_path.read_text())
            row |= report["metrics"]
            row["train_images"] = report.get("split_sizes", {}).get("train")
            row["status"] = "ok"
        elif latest == failed_path:
            row["status"] = "failed"
            row["error"] = json.loads(failed_path.read_text())["last_line"]
        else:
            row["status"] = "incomplete"  # still running, killed, or stopped before writing
            row["error"] = f"no {METRICS_FILE} or {FAILED_FILE} (still running or killed?)"
    except (ValueError, KeyError, TypeError) as e:
        row["status"] = "failed"
        row["error"] = f"cannot read {latest.name}: {type(e).__name__}: {e}"
    row |= read_eval(run_dir)
    started = run_dir / ".hydra" / "config.yaml"  # Hydra writes it as the job starts
    if latest is not None and started.is_file():
        row["job_seconds"] = round(latest.stat().st_mtime - started.stat().st_mtime, 1)
    return row


def read_eval(run_dir: Path) -> dict[str, Any]:
    """:data:`EVAL_COLUMNS` from the newest ``eval/*-test/eval.json`` of a run ({} if none)."""
    found = sorted((run_dir / "eval").glob("*-test/eval.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return {}
    try:
        metrics = json.loads(found[-1].read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        log.warning("cannot read %s; leaving its numbers out", found[-1])
        return {}
    out = {}
    for column, (variant, path) in EVAL_COLUMNS.items():
        value: Any = metrics.get(variant, {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out[column] = float("nan") if value is None else value
    return out


# ----------------------------------------------------------------------------- the table
def higher_is_better(metric: str) -> bool:
    """Losses are minimised, everything else (IoU, Dice) maximised."""
    return "loss" not in metric


def collect(
    paths: Iterable[str | os.PathLike], metric: str | None = None
) -> tuple[pd.DataFrame, str]:
    """One row per run found in ``paths``, best first by ``metric``; failed runs last.

    Args:
        paths: Sweep folders or run folders (see :func:`find_runs`).
        metric: The metric to sort by; default the runs' ``optimized_metric`` (val/iou).

    Returns:
        The table (columns ``job, status, changes, overrides, arch, encoder``, the metrics,
        ``error, run_dir``) and the metric it is sorted by.

    Raises:
        FileNotFoundError: a path is missing, or no run is found in any of them.
    """
    paths = list(paths)
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(
            f"no runs found in {', '.join(map(str, paths))}: a run folder holds metrics.json, "
            f"{FAILED_FILE}, config.yaml or .hydra/; give a sweep folder "
            "(outputs/<task>/multiruns/<time>) or run folders"
        )
    rows = [read_run(r) for r in runs]
    table = pd.DataFrame(rows)
    root = Path(os.path.commonpath(runs))
    table.insert(0, "job", [_job_name(r, root) for r in runs])
    metric = metric or next((m for m in table["optimized_metric"] if m), None) or "val/iou"
    table = table.drop(columns="optimized_metric")
    table.insert(2, "changes", _changes(table["overrides"].tolist()))
    for name in (*METRICS, metric):
        if name not in table:
            table[name] = float("nan")
    first = ["job", "status", "changes", "overrides", "arch", "encoder", *METRICS]
    extra = sorted(c for c in table if c not in first and c not in ("error", "run_dir"))
    table = table[[*first, *extra, "error", "run_dir"]]
    ok = table["status"] == "ok"
    best = table[ok].sort_values(
        metric, ascending=not higher_is_better(metric), na_position="last", kind="stable"
    )
    rest = table[~ok].sort_values("job", key=lambda s: s.map(_natural), kind="stable")
    return pd.concat([best, rest], ignore_index=True), metric


def _job_name(run: Path, root: Path) -> str:
    rel = run.relative_to(root)
    return run.name if rel == Path(".") else rel.as_posix()


def _changes(overrides: Sequence[str]) -> list[str]:
    """Each run's overrides minus those every run shares: what tells the runs apart."""
    split = [o.split() for o in overrides]
    common = set.intersection(*map(set, split)) if len(split) > 1 else set()
    return [" ".join(o for o in s if o not in common) for s in split]


# ----------------------------------------------------------------------------- writing
def to_markdown(table: pd.DataFrame, metric: str) -> str:
    """``summary.md``: the table with readable headings, then the overrides every run shares."""
    columns = [
        c
        for c in MD_COLUMNS
        if c in table
        and (c != "error" or table[c].any())
        and (c not in EVAL_COLUMNS or table[c].notna().any())  # evaluated runs only
    ]
    if metric not in columns:
        columns.insert(3, metric)
    head = [MD_COLUMNS.get(c, (c, ""))[0] for c in columns]
    lines = [
        f"Sorted by {metric} ({'highest' if higher_is_better(metric) else 'lowest'} first); "
        f"{(table['status'] == 'ok').sum()} of {len(table)} runs ended.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for _, row in table.iterrows():
        cells = []
        for c in columns:
            value, fmt = row[c], MD_COLUMNS.get(c, (c, "{:.4f}"))[1]
            if c == "params" and pd.notna(value):
                value = value / 1e6
            if value is None or (isinstance(value, float) and pd.isna(value)):
                cells.append("")
            else:
                cells.append(fmt.format(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    shared = sorted(set.intersection(*(set(o.split()) for o in table["overrides"])))
    if len(table) > 1 and shared:
        lines += ["", "Overrides of every run: `" + " ".join(shared) + "`"]
    return "\n".join(lines) + "\n"


def plotted(table: pd.DataFrame, metric: str) -> list[str]:
    """The metrics a plot shows: ``metric``, and test IoU when it is another one with values."""
    series = [metric] + (["test/iou"] if metric != "test/iou" else [])
    return [s for s in series if s in table and table[s].notna().any()] or [metric]


def plot(table: pd.DataFrame, metric: str, path: Path) -> None:
    """``summary.png``: a bar per run of ``metric`` (and test IoU when it is another metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{job}: {changes}" if changes else str(job)
        for job, changes in zip(table["job"], table["changes"])
    ]
    series = plotted(table, metric)
    height = 0.8 / len(series)
    y = range(len(table))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(table)))
    for k, name in enumerate(series):
        values = table[name].astype(float).fillna(0.0)
        ax.barh([i + k * height for i in y], values, height=height, label=name)
    for i, (status, error) in enumerate(zip(table["status"], table["error"])):
        if status != "ok":
            ax.text(0.01, i, f"{status}: {error}"[:90], va="center", color="tab:red", fontsize=8)
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in y])
    ax.set_yticklabels([label[:60] for label in labels], fontsize=8)
    ax.invert_yaxis()  # best on top, like the table
    ax.set_xlabel("score")
    ax.set_title(f"{len(table)} runs, sorted by {metric}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_summary(table: pd.DataFrame, metric: str, out: str | os.PathLike) -> str:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``out``.

    Returns:
        The markdown table.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", table.to_csv(index=False))
    markdown = to_markdown(table, metric)
    atomic_write_text(out / "summary.md", markdown)
    plot(table, metric, out / "summary.png")
    return markdown


# ----------------------------------------------------------------------------- curves
def param_value(run_dir: str | os.PathLike, param: str) -> Any:
    """The value of the dotted config key ``param`` (e.g. ``data.train_fraction``) in a run:
    from its ``config.yaml``, else from its overrides; None when neither has it."""
    value: Any = _load_yaml(Path(run_dir) / "config.yaml") or {}
    for key in param.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is not None:
        return value
    for override in _load_yaml(Path(run_dir) / ".hydra" / "overrides.yaml") or []:
        key, _, text = str(override).lstrip("+~").partition("=")
        if key == param:
            return yaml.safe_load(text)
    return None


def curve(table: pd.DataFrame, param: str, metric: str) -> pd.DataFrame:
    """A metric against a swept parameter: one row per value of ``param`` (the mean of the
    runs that ended with it, e.g. several seeds), sorted by it.

    Args:
        table: :func:`collect`'s table.
        param: A dotted config key the runs differ in, e.g. ``data.train_fraction``.
        metric: The main metric; test IoU joins it (see :func:`plotted`).

    Returns:
        Columns ``param``, ``runs``, ``train_images`` and the metrics.

    Raises:
        ValueError: no run that ended has a number for ``param``.
    """
    ok = table[table["status"] == "ok"]
    x = pd.to_numeric(pd.Series([param_value(r, param) for r in ok["run_dir"]]), errors="coerce")
    if x.isna().all():
        raise ValueError(
            f"--curve {param}: no run that ended has a number for {param} in its config.yaml "
            "or overrides; name a key the sweep changes, e.g. --curve data.train_fraction"
        )
    series = plotted(table, metric)
    points = ok[["train_images", *series]].astype(float).reset_index(drop=True)
    points.insert(0, param, x)
    points.insert(1, "runs", 1)
    return (
        points.dropna(subset=[param])
        .groupby(param, as_index=False)
        .agg({"runs": "sum", "train_images": "mean", **{s: "mean" for s in series}})
        .sort_values(param, ignore_index=True)
    )


def plot_curve(points: pd.DataFrame, param: str, path: Path) -> None:
    """``curve.png``: each metric of ``points`` (:func:`curve`) against ``param``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in points.columns[3:]:
        ax.plot(points[param], points[name], marker="o", label=name)
    ax.set_xlabel(param)
    ax.set_ylabel("score")
    ax.set_title(f"{' and '.join(points.columns[3:])} against {param}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_curve(table: pd.DataFrame, param: str, metric: str, out: str | os.PathLike) -> str:
    """Write ``curve.csv``, ``curve.md`` and ``curve.png`` into ``out`` (see :func:`curve`).

    Returns:
        The markdown table.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = curve(table, param, metric)
    atomic_write_text(out / "curve.csv", points.to_csv(index=False))
    head = [
        param,
        "runs",
        "train images",
        *(MD_COLUMNS.get(c, (c,))[0] for c in points.columns[3:]),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in points.itertuples(index=False):
        images = "" if pd.isna(row[2]) else f"{row[2]:.0f}"
        values = [f"{v:.4f}" for v in row[3:]]
        lines.append("| " + " | ".join([f"{row[0]:g}", str(row[1]), images, *values]) + " |")
    markdown = "\n".join(lines) + "\n"
    atomic_write_text(out / "curve.md", markdown)
    plot_curve(points, param, out / "curve.png")
    return markdown


# ----------------------------------------------------------------------------- Hydra, CLI
class SweepSummary(Callback):
    """Hydra callback: the comparison of a multirun's jobs, written into its sweep folder.

    Args:
        fail_on_job_error: After writing the summary, exit with status 1 when a job failed (the
            other jobs have run; their results are in the summary).
        curve: A swept config key (e.g. ``data.train_fraction``): also write the curve of the
            optimised metric against it (:func:`write_curve`).
    """

    def __init__(self, fail_on_job_error: bool = True, curve: str | None = None) -> None:
        self.fail_on_job_error = fail_on_job_error
        self.curve = curve

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            table, metric = collect([sweep_dir], config.get("optimized_metric"))
        except FileNotFoundError as e:
            log.warning("no sweep summary: %s", e)
            return
        markdown = write_summary(table, metric, sweep_dir)
        log.info("sweep summary (%s):\n%s", sweep_dir / "summary.md", markdown)
        if self.curve:
            try:
                markdown = write_curve(table, self.curve, metric, sweep_dir)
                log.info("curve (%s):\n%s", sweep_dir / "curve.md", markdown)
            except ValueError as e:
                log.warning("no curve: %s", e)
        failed = table[table["status"] != "ok"]
        if len(failed) and self.fail_on_job_error:
            log.error(
                "%d of %d jobs did not end: %s (see %s)",
                len(failed),
                len(table),
                ", ".join(failed["job"]),
                sweep_dir / "summary.md",
            )
            raise SystemExit(1)
