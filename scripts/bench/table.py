"""The printed table: one line per measurement, the targets beside them, printed last."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.options import RUNTIME_TARGETS, SERVE_TARGET


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def table(results: dict[str, Any]) -> str:
    """The printed summary: one line per measurement, the targets beside them."""
    m = results["meta"]
    lines = [
        f"steelseg benchmark on {m['device_name']} ({m['device']}, {m['cpu_count']} CPU cores, "
        f"torch {m['torch']}); model {m['model']}, training at {m['size'][0]}x{m['size'][1]}",
        f"{'measurement':55s} {'batch':>5s}  {'value':>14s}  note",
    ]

    def add(name: str, batch: Any, value: str, note: str = "") -> None:
        lines.append(f"{name:55s} {fmt(batch):>5s}  {value:>14s}  {note}")

    for row in results.get("model_step", []):
        add(f"(a) model-only train step, {row['variant']}", row["batch"],
            fmt(row["images_per_s"], " img/s"), f"{row['step_ms']} ms/step")  # fmt: skip
    for row in results.get("steelseg_loop", []):
        name = "(b) steelseg loop, train" + (
            f" +compile={row['compile']}" if row["compile"] else ""
        )
        add(name, row["batch"], fmt(row["train_images_per_s"], " img/s"),
            f"val {fmt(row['val_images_per_s'])} img/s, {row['precision']}, "
            f"+{row['epoch_overhead_s']} s/epoch")  # fmt: skip
    for row in results.get("reference_loop", []):
        add("(c) reference-style loop, train", row["batch"],
            fmt(row["train_images_per_s"], " img/s"),
            f"val {fmt(row['val_images_per_s'])} img/s, fp32, {row['num_workers']} workers")  # fmt: skip
    inf = results.get("inference")
    if inf:
        for name, row in inf["model_only"].items():
            add(f"(d) inference 256x1600, model only, {name}", inf["batch"],
                fmt(row["images_per_s"], " img/s"))  # fmt: skip
        if inf.get("predictor"):
            add("(d) inference 256x1600, Predictor", inf["batch"],
                fmt(inf["predictor"]["images_per_s"], " img/s"))  # fmt: skip
        else:
            add("(d) inference 256x1600, Predictor", inf["batch"], "skipped", inf["predictor_note"])
    rle = results.get("rle")
    if rle:
        add("(e) RLE decode (per-run loop)", None, f"{rle['decode_us']} us",
            f"loop {rle['decode_loop_us']} us: {rle['decode_speedup']}x (target >= 3x)")  # fmt: skip
        add("(e) RLE encode (np.where)", None, f"{rle['encode_us']} us",
            f"np.where {rle['encode_where_us']} us: {rle['encode_speedup']}x (target >= 1x)")  # fmt: skip
    dp = results.get("data_path")
    if dp:
        add("data path per core, uint8 cache", 8, fmt(dp["cached_images_per_s"], " img/s"),
            f"at {dp['size'][0]}x{dp['size'][1]}")  # fmt: skip
        add("data path per core, JPEG decode", 8, fmt(dp["jpeg_images_per_s"], " img/s"),
            f"cached/jpeg {dp['cached_over_jpeg']}x (target >= 3x)")  # fmt: skip
        add("data path per core, reference-style", 8,
            fmt(dp["reference_style_images_per_s"], " img/s"),
            f"cached/reference-style {dp['cached_over_reference_style']}x")  # fmt: skip
    mem = results.get("memory")
    if mem:
        add(f"memory: 1 epoch over {mem['train_images']} cached images", None,
            fmt(mem["rss_growth_mb"], " MB"),
            f"peak RSS growth; train cache {mem['train_cache_mb']} MB, "
            f"overhead {mem['overhead_mb']} MB, heap {mem['anon_growth_mb']} MB")  # fmt: skip
    runtimes_table(results.get("runtimes"), add)
    serve_table(results.get("serve"), add)
    ratios = results.get("ratios", {})
    targets = {"b_over_a": ">= 0.9 (GPU, batch 32)", "b_over_c": ">= 1.6 (GPU, batch 32)",
               "predictor_over_model": ">= 0.9", "cached_over_jpeg": ">= 3"}  # fmt: skip
    for k, target in targets.items():
        if k in ratios:
            add(f"ratio {k.replace('_over_', '/')}", None, fmt(ratios[k]), f"target {target}")
    rec = results.get("reference_recipe", {})
    for k, v in rec.items():
        if k.endswith("_s") and v is not None:
            target = " (target <= 60 s on one H100/H200)" if k == "steelseg_s" else ""
            add(f"reference recipe (800 x 30 ep + val) {k[:-2]}", m["args"]["reference_batch"],
                fmt(v, " s"), "projected" + target)  # fmt: skip
    peak = results.get("peak", {})
    add("peak host RSS / peak GPU memory", None, fmt(peak.get("host_rss_mb"), " MB"),
        f"GPU {fmt(peak.get('gpu_mb'), ' MB')}")  # fmt: skip
    return "\n".join(lines)


def runtimes_table(rt: dict[str, Any] | None, add: Callable[..., None]) -> None:
    """The runtimes section's lines of the table (see :func:`table`)."""
    if not rt:
        return
    installed = ", ".join(f"{k} {v}" for k, v in rt["versions"].items() if v)
    add(f"(r) CPU runtimes on {rt['cpu']}", None, f"{rt['threads']} threads",
        f"{installed}; native bf16 {'yes' if rt['native_bf16'] else 'no'}")  # fmt: skip
    for name, info in rt["models"].items():
        accuracy = info.get("accuracy_note") or f"Dice on {info['test_images']} test images"
        add(f"(r) {name} model", None, "", f"{info.get('model')}; {accuracy}")
        for row in (r for r in rt["rows"] if r["model"] == name):
            dice = "" if row["dice_diff"] is None else (
                f"; Dice {row['dice_per_image']:.4f} ({row['dice_diff']:+.4f})"
            )  # fmt: skip
            add(f"(r) {name} {row['variant']}, model only", row["batch"],
                fmt(row["images_per_s"], " img/s"),
                f"{fmt(row['speedup'])}x fp32; strips {fmt(row['strip_images_per_s'])} img/s "
                f"({fmt(row['strip_speedup'])}x){dice}")  # fmt: skip
        for variant, reason in info["skipped"].items():
            add(f"(r) {name} {variant}", None, "skipped", reason)
        auto = info["auto"]
        target = RUNTIME_TARGETS.get(name)
        for row in auto["batches"]:
            dice = "" if auto["dice_diff"] is None else f"; Dice {auto['dice_diff']:+.4f}"
            add(f"(r) {name} auto = {auto['runtime']} {auto['precision']}", row["batch"],
                fmt(row["images_per_s"], " img/s"),
                f"{fmt(row['speedup'])}x fp32" + (f" (target >= {target}x)" if target else "")
                + dice)  # fmt: skip
        pf = info["predict_folder"]
        add(f"(r) {name} steelseg-predict, folder of {pf['images']}", pf["batch"],
            fmt(pf["images_per_s"], " img/s"),
            f"{fmt(pf['over_model'])} of its model-only {fmt(pf['model_images_per_s'])} img/s "
            "(target >= 0.9)")  # fmt: skip
        for outputs, row in pf.get("by_outputs", {}).items():
            if outputs != "all":
                add(f"(r) {name} steelseg-predict --outputs {outputs}", row["batch"],
                    fmt(row["images_per_s"], " img/s"), f"{fmt(row['over_model'])} of model-only")  # fmt: skip


def serve_table(sv: dict[str, Any] | None, add: Callable[..., None]) -> None:
    """The serve section's lines of the table (see :func:`table`)."""
    if not sv:
        return
    trained = "" if sv["trained"] else " (untrained)"
    add(f"(s) steelseg-serve on {sv['runtime']} {sv['precision']}{trained}", sv["max_batch"],
        fmt(sv["model_images_per_s"], " img/s"),
        f"model only; {sv['model']}; started in {fmt(sv['startup_s'])} s")  # fmt: skip
    for row in sv["rows"]:
        sizes = ", ".join(f"{k}: {v}" for k, v in row["batches"].items())
        target = f" (target >= {SERVE_TARGET})" if row["clients"] == 8 else ""
        add(f"(s) serve, {row['clients']} client(s), POST /predict 256x1600 JPEG",
            sv["max_batch"], fmt(row["images_per_s"], " img/s"),
            f"{fmt(row['over_model'])} of model only{target}; p50 {fmt(row['p50_ms'])} ms, "
            f"p99 {fmt(row['p99_ms'])} ms; mean batch {fmt(row['mean_batch'])} "
            f"(batches by size {sizes})")  # fmt: skip
