"""The short table that ends ``scripts/gpu_check.sh``: each target with its measured number, the
two seeded training runs side by side, the sweep's summary and every step's outcome.

    python scripts/gpu_check_table.py OUTDIR [WALL_SECONDS]   # reads what gpu_check.sh wrote

Exit status 1 when a step failed or timed out (the table still prints what exists)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

#: target per ratio or projection: (key, bound, higher is better)
TARGETS = {
    "b_over_a": (">= 0.9", 0.9, True),
    "b_over_c": (">= 1.6", 1.6, True),
    "predictor_over_model": (">= 0.9", 0.9, True),
    "cached_over_jpeg": (">= 3", 3.0, True),
    "steelseg_s": ("<= 60 s", 60.0, False),
    "steelseg_compile_s": ("<= 60 s", 60.0, False),
}

#: what a step's exit status in steps.txt means, when not 0
OUTCOMES = {"124": "OVER ITS TIME LIMIT", "skipped": "SKIPPED: the check's budget was spent"}


def fmt(v: Any, unit: str = "") -> str:
    if isinstance(v, float):
        return (f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}") + unit
    return "-" if v is None else f"{v}{unit}"


def verdict(key: str, value: Any) -> str:
    if key not in TARGETS:
        return ""
    text, bound, higher = TARGETS[key]
    if not isinstance(value, (int, float)):
        return f"target {text}: not measured"
    met = value >= bound if higher else value <= bound
    return f"target {text}: {'met' if met else 'MISSED'}"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def benchmark_rows(b: dict[str, Any], compiled: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for r in b.get("model_step", []):
        name = f"(a) model-only step, {r['variant']}, batch {r['batch']}"
        rows.append((name, fmt(r["images_per_s"], " img/s"), ""))
    # the compile run's own eager row is a repeat of (b): only its compiled rows are new
    compiled_rows = [r for r in compiled.get("steelseg_loop", []) if r["compile"]]
    for r in b.get("steelseg_loop", []) + compiled_rows:
        c = f" compile={r['compile']}" if r["compile"] else ""
        name = f"(b) steelseg loop, batch {r['batch']}{c}"
        rows.append((name, fmt(r["train_images_per_s"], " img/s"), r["precision"]))
    for r in b.get("reference_loop", []):
        name = f"(c) reference-style loop, batch {r['batch']}"
        rows.append((name, fmt(r["train_images_per_s"], " img/s"), "fp32"))
    inf = b.get("inference") or {}
    for k, r in inf.get("model_only", {}).items():
        name = f"(d) inference 256x1600 model only, {k}"
        rows.append((name, fmt(r["images_per_s"], " img/s"), ""))
    if inf.get("predictor"):
        name = "(d) inference 256x1600 Predictor"
        rows.append((name, fmt(inf["predictor"]["images_per_s"], " img/s"), ""))
    for k, v in b.get("ratios", {}).items():
        if k in TARGETS:
            rows.append((f"ratio {k.replace('_over_', '/')}", fmt(v), verdict(k, v)))
    recipe = dict(b.get("reference_recipe", {}))
    if "steelseg_compile_s" in compiled.get("reference_recipe", {}):
        recipe["steelseg_compile_s"] = compiled["reference_recipe"]["steelseg_compile_s"]
    for k, v in recipe.items():
        if k.endswith("_s"):
            name = f"reference recipe projected, {k[:-2]}"
            rows.append((name, fmt(v, " s"), verdict(k, v)))
    for loop, label in (("model_step", "(a)"), ("steelseg_loop", "(b)")):
        prof = (b.get("profile") or {}).get(loop)
        if prof:
            value = f"{prof['wall_ms_per_step']:.1f} / {prof['host_ms_per_step']:.1f} / {prof['gpu_busy_ms_per_step']:.1f} ms"
            note = f"{prof['launches_per_step']} kernel launches per step"
            rows.append((f"profile {label}: wall / host / GPU busy per step", value, note))
    busiest = ((b.get("profile") or {}).get("steelseg_loop") or {}).get("busiest_host_ops", [])
    for op in busiest[:3]:
        rows.append(
            (
                "profile (b): busy host op",
                op["op"][:22],
                f"{op['ms_per_step']} ms, {op['calls_per_step']} calls per step",
            )
        )
    mem = b.get("memory") or {}
    if mem:
        value = f"{mem['rss_growth_mb']} / {mem['train_cache_mb']} MB"
        rows.append(
            ("memory: RSS growth / train cache", value, f"heap +{mem['anon_growth_mb']} MB")
        )
    if b.get("peak"):
        value = fmt(b["peak"]["host_rss_mb"], " MB")
        rows.append(("peak host RSS / GPU memory", value, fmt(b["peak"]["gpu_mb"], " MB")))
    return rows


def training_rows(out: Path) -> list[tuple[str, str, str]]:
    runs = [read_json(out / f"train_metrics{i}.json").get("metrics") for i in (1, 2)]
    rows = []
    config = out / "train_config.yaml"
    if config.is_file():
        precision = yaml.safe_load(config.read_text())["trainer"]["precision"]
        rows.append(("training run: precision", str(precision), ""))
    for i, m in enumerate(runs, 1):
        if not m:
            rows.append((f"training run {i}", "no metrics", "failed: see its log"))
            continue
        rows.append(
            (
                f"training run {i}: val IoU / test IoU",
                f"{m.get('val/iou', float('nan')):.4f} / {m.get('test/iou', float('nan')):.4f}",
                f"{m['epochs']:.0f} epochs, fit {m['fit_seconds']} s, "
                f"{fmt(m['train_images_per_s'], ' img/s')}",
            )
        )
    if all(runs):
        keys = [k for k in ("val/iou", "test/iou", "val/loss") if k in runs[0] and k in runs[1]]
        diffs = ", ".join(f"{k} {abs(runs[0][k] - runs[1][k]):.4f}" for k in keys)
        rows.append(("same seed, two runs: |difference|", diffs or "-", ""))
    return rows


def sweep_rows(out: Path) -> list[tuple[str, str, str]]:
    path = out / "sweep_summary.csv"
    if not path.is_file():
        return [("sweep (compare_arch_encoder)", "no summary", "failed: see sweep.log")]
    table = pd.read_csv(path)
    rows = []
    for _, r in table.iterrows():
        name = f"sweep: {r.get('arch')} + {r.get('encoder')}"
        if r.get("status") != "ok":
            rows.append((name, str(r.get("status")), str(r.get("error", ""))[:60]))
            continue
        value = f"{r.get('val/iou', float('nan')):.4f} / {r.get('test/iou', float('nan')):.4f}"
        rows.append((name, value, f"val / test IoU; {fmt(r.get('train_images_per_s'), ' img/s')}"))
    return rows


def step_rows(out: Path, wall: int | None) -> tuple[list[tuple[str, str, str]], bool]:
    """A row per step and one for all; ``wall``: the check's wall time (side-by-side steps
    overlap), else the steps' times summed."""
    rows, failed = [], False
    path = out / "steps.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        name, rc, seconds = line.rsplit(" ", 2)
        ok = rc == "0"
        failed |= not ok
        outcome = "ok" if ok else OUTCOMES.get(rc, f"FAILED (exit {rc})")
        rows.append((f"step: {name}", f"{seconds} s", outcome))
    total = wall if wall is not None else sum(int(x.rsplit(" ", 1)[1]) for x in lines)
    ok = sum(r[2] == "ok" for r in rows)
    rows.append(("steps: all", f"{total} s", f"{ok} of {len(lines)} ok"))
    return rows, failed


def main(out: Path, wall: int | None = None) -> int:
    b = read_json(out / "benchmark.json")
    compiled = read_json(out / "benchmark_compile.json")
    device = (b.get("meta") or compiled.get("meta") or {}).get("device_name", "?")
    tests = out / "gpu_tests.log"
    tests_line = tests.read_text().strip().splitlines()[-1] if tests.is_file() else "no log"
    rows = [("device", device, "")]
    steps, failed = step_rows(out, wall)
    ran = " ".join(name for name, _, _ in steps)
    rows += benchmark_rows(b, compiled)
    if "training run" in ran:
        rows += training_rows(out)
    if "sweep" in ran:
        rows += sweep_rows(out)
    if "GPU tests" in ran:
        rows.append(("GPU tests (-m 'gpu and not slow')", tests_line[:44], ""))
    rows += steps
    print("== gpu_check summary")
    for name, value, note in rows:
        print(f"{name:48s} {value:>22s}  {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None))
