"""The run's summary across sections: the ratios the targets are set on (b/a, b/c, Predictor /
model, cached / JPEG), the reference recipe's wall time projected from the measured loops, and
the run's memory peaks. JSON ``ratios``, ``reference_recipe`` and ``peak``."""

from __future__ import annotations

from typing import Any

from bench.context import Bench
from bench.measure import peak_rss_mb

#: the reference's training recipe, projected from the loops' measured images/s
REFERENCE_RECIPE = {"train_images": 800, "val_images": 100, "epochs": 30, "batch_size": 8}


def project_reference_recipe(row: dict[str, Any] | None) -> float | None:
    """Wall time of the reference recipe (800 x 30 epochs at batch 8, 100 validation images each
    epoch) from a loop's measured images/s and per-epoch overhead."""
    if not row or not row.get("train_images_per_s") or not row.get("val_images_per_s"):
        return None
    r = REFERENCE_RECIPE
    per_epoch = (
        r["train_images"] / row["train_images_per_s"]
        + r["val_images"] / row["val_images_per_s"]
        + row["epoch_overhead_s"]
    )
    return round(r["epochs"] * per_epoch + row["fixed_s"], 1)


def pick(rows: list[dict[str, Any]] | None, **where: Any) -> dict[str, Any] | None:
    """The first row whose fields equal ``where``, or None."""
    return next((x for x in rows or [] if all(x.get(k) == v for k, v in where.items())), None)


def summarise(bench: Bench) -> None:
    r, a = bench.results, bench.args
    fast = bench.variants()
    fast_name = bench.fastest_eager()  # (b) runs steelseg's defaults: its ceiling

    ratios: dict[str, Any] = {}
    model = r.get("model_step")
    b = pick(r.get("steelseg_loop"), batch=a.batch, compile=None)
    c = pick(r.get("reference_loop"), batch=a.batch)
    a_fast = pick(model, batch=a.batch, variant=fast_name)
    if b and a_fast:
        ratios["b_over_a"] = round(b["train_images_per_s"] / a_fast["images_per_s"], 3)
        ratios["a_variant"] = fast_name
    if b and c:
        ratios["b_over_c"] = round(b["train_images_per_s"] / c["train_images_per_s"], 3)
    inf = r.get("inference")
    if inf and inf.get("predictor"):
        best = max(v["images_per_s"] for v in inf["model_only"].values())
        fp32 = inf["model_only"]["fp32"]["images_per_s"]
        ratios["predictor_over_model"] = round(inf["predictor"]["images_per_s"] / best, 3)
        ratios["predictor_over_model_fp32"] = round(inf["predictor"]["images_per_s"] / fp32, 3)
    if r.get("data_path"):
        ratios["cached_over_jpeg"] = r["data_path"]["cached_over_jpeg"]
    r["ratios"] = ratios

    sb = a.reference_batch
    recipe: dict[str, Any] = {"recipe": REFERENCE_RECIPE}
    recipe["steelseg_s"] = project_reference_recipe(
        pick(r.get("steelseg_loop"), batch=sb, compile=None)
    )
    if a.compile:
        recipe["steelseg_compile_s"] = project_reference_recipe(
            pick(r.get("steelseg_loop"), batch=sb, compile=a.compile)
        )
    recipe["reference_style_s"] = project_reference_recipe(pick(r.get("reference_loop"), batch=sb))
    for v in fast:
        row = pick(model, batch=sb, variant=v["name"])
        if row:
            n = REFERENCE_RECIPE["train_images"] * REFERENCE_RECIPE["epochs"]
            recipe[f"pure_model_{v['name']}_s"] = round(n / row["images_per_s"], 1)
    r["reference_recipe"] = recipe
    r["peak"] = {
        "host_rss_mb": round(max(bench.peaks.host_mb, peak_rss_mb() or 0.0), 1),
        "gpu_mb": round(bench.peaks.gpu_mb, 1) if bench.cuda else None,
    }
