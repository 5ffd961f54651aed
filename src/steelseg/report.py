"""A self-contained HTML report of an evaluation (the content of ``eval.json``).

One file, no network: inline CSS, plots drawn with matplotlib's Agg canvas and every picture
embedded as a base64 PNG ``data:`` URI; a Content-Security-Policy forbids anything else. It shows
the headline metrics with and without post-processing, the field's segmentation metrics (mIoU,
per-class IoU / Dice / precision / recall, the pixel confusion matrix as a heat map), the empty
vs defective image confusion,
the threshold curve, image- and defect-level detection, and per-image panels worst first (each
strip with its found defects, false alarms and misses in colour).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from steelseg.draw import CLASS_RGB, FN_RGB, FP_RGB, TP_RGB, class_overlay, overlay
from steelseg.io import atomic_write_text

VARIANT_LABELS = {"threshold_only": "threshold only", "postprocessed": "post-processed"}

PanelLoader = Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- pictures
def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of a grey (H, W) or RGB (H, W, 3) uint8 image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch, no display needed
    return fig


def figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: float | None) -> float:
    return np.nan if v is None else float(v)


def threshold_curve_uri(
    curve: Sequence[Mapping[str, float]], used: float, model_threshold: float
) -> str:
    """PNG plot of IoU, Dice and per-image Dice against the threshold, as a data URI."""
    fig = figure(6.2, 3.4)
    ax = fig.add_subplot()
    t = [r["threshold"] for r in curve]
    for key, label, style in (
        ("dice_per_image", "per-image Dice (Kaggle)", "-o"),
        ("dice", "pixel Dice", "-s"),
        ("iou", "pixel IoU", "-^"),
    ):
        ax.plot(t, [_num(r[key]) for r in curve], style, ms=3, label=label)
    scored = [r for r in curve if r["dice_per_image"] is not None]
    if scored:
        best = max(scored, key=lambda r: r["dice_per_image"])
        ax.annotate(
            f"best {best['dice_per_image']:.3f} @ {best['threshold']:.2f}",
            (best["threshold"], best["dice_per_image"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="left"
            if best["threshold"] < 0.2
            else "right"
            if best["threshold"] > 0.8
            else "center",
            fontsize=8,
        )
    ax.axvline(used, color="0.2", ls="--", lw=1, label=f"threshold in use ({used:.2f})")
    if abs(model_threshold - used) > 1e-9:
        ax.axvline(
            model_threshold, color="0.5", ls=":", lw=1, label=f"model's ({model_threshold:.2f})"
        )
    ax.set_xlabel("probability threshold (no area filters)")
    ax.set_ylabel("score")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return figure_uri(fig)


def dice_histogram_uri(dice: Sequence[float], clean: Sequence[bool]) -> str:
    """PNG histogram of per-image Dice, defective and clean images stacked, as a data URI."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(6.2, 3.4)
    ax = fig.add_subplot()
    d, c = np.asarray(dice, dtype=float), np.asarray(clean, dtype=bool)
    ax.hist(
        [d[~c], d[c]],
        bins=np.linspace(0, 1, 21),
        stacked=True,
        color=["#475569", "#cbd5e1"],
        label=["defective images", "clean images"],
    )
    ax.set_xlabel("per-image Dice (post-processed)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # image counts
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return figure_uri(fig)


def _count(n: int) -> str:
    """A pixel count in a heat-map cell: exact below 10,000, then k / M / G."""
    if n < 10_000:
        return str(n)
    div, unit = next((d, u) for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if n >= d)
    return f"{n / div:.3g}{unit}"


def confusion_matrix_uri(
    matrices: Mapping[str, Sequence[Sequence[int]]], names: Sequence[str]
) -> str:
    """PNG heat maps of pixel confusion matrices side by side, as a data URI: each cell shows
    its pixel count and its share of the row (the true class's pixels), coloured by that share.

    Args:
        matrices: Title -> counts, rows = ground truth, columns = prediction.
        names: The classes, background first.
    """
    n = len(names)
    size = max(3.2, 1.0 + 0.75 * n)  # inches per matrix: room for two lines in each cell
    fig = figure(size * len(matrices) + 1.2, size + 0.3)
    axes = fig.subplots(1, len(matrices), squeeze=False, gridspec_kw={"wspace": 0.06})[0]
    for i, (ax, (title, counts)) in enumerate(zip(axes, matrices.items())):
        m = np.asarray(counts, dtype=np.int64)
        rows = m.sum(1, keepdims=True)
        share = np.divide(m, rows, out=np.full(m.shape, np.nan), where=rows > 0)  # row-normalised
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for (t, q), c in np.ndenumerate(m):
            pct = "n/a" if np.isnan(share[t, q]) else f"{100 * share[t, q]:.1f}%"
            dark = not np.isnan(share[t, q]) and share[t, q] > 0.55
            ax.text(
                q,
                t,
                f"{_count(int(c))}\n{pct}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "#0f172a",
            )
        ax.set_xticks(range(n), names, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.tick_params(labelleft=i == 0)  # the rows are the same classes in every matrix
        ax.set_xlabel("predicted")
        if i == 0:
            ax.set_ylabel("ground truth")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=list(axes), fraction=0.03, label="share of the true class's pixels")
    return figure_uri(fig)


# ----------------------------------------------------------------------------- HTML pieces
def page(
    title: str,
    subtitle: str,
    body: str,
    numbers: str,
    css: str = "",
    heading: str | None = None,
) -> str:
    """A self-contained steelseg report page around ``body`` (HTML): the style, the content
    policy (no network), the header and the footer naming the JSON that holds every number.

    Args:
        title: The page's title (text).
        subtitle: The line under the heading (HTML).
        body: The sections (HTML).
        numbers: The JSON file beside the page.
        css: Style added to the shared one.
        heading: The heading (text); default the title.
    """
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}{css}</style></head>
<body><header><h1>{html.escape(heading or title)}</h1>
<p>{subtitle} &middot; {html.escape(when)}</p></header>
<main>
{body}
<footer>steelseg &middot; {html.escape(numbers)} beside this file holds every number</footer>
</main><script>{SCRIPT}</script></body></html>
"""


def write_page(path: str | os.PathLike, text: str) -> None:
    """Write a report page atomically, in ASCII (character references for the rest): right
    whatever the locale's encoding."""
    atomic_write_text(Path(path), text.encode("ascii", "xmlcharrefreplace").decode("ascii"))


def fmt_number(v: Any, digits: int = 3) -> str:
    if v is None:
        return '<span class="na" title="undefined: no images of that kind">n/a</span>'
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return ""
    d = b - a
    cls = "up" if d > 5e-4 else "down" if d < -5e-4 else "same"
    return f'<span class="{cls}">{d:+.3f}</span>'


HEADLINE = [
    ("Pixels", "pixel", "dice_per_image", "per-image Dice (Kaggle rule)"),
    ("Pixels", "pixel", "iou", "IoU (all pixels)"),
    ("Pixels", "pixel", "dice", "Dice (all pixels)"),
    ("Segmentation", "segmentation", "mIoU", "mIoU (background + classes)"),
    ("Segmentation", "segmentation", "mDice", "mDice (background + classes)"),
    ("Segmentation", "segmentation", "mAcc", "mAcc: mean recall of each class"),
    ("Segmentation", "segmentation", "aAcc", "aAcc: pixels labelled right"),
    ("Images", "image", "precision", "precision: flagged images that have a defect"),
    ("Images", "image", "recall", "recall: defective images flagged"),
    ("Images", "image", "f1", "F1"),
    ("Images", "image", "specificity", "specificity: clean images left clean"),
    ("Images", "image", "roc_auc_max_prob", "ROC AUC, score = max probability"),
    ("Images", "image", "roc_auc_area", "ROC AUC, score = predicted area"),
    ("Defects", "defect", "recall", "recall: true defects found"),
    ("Defects", "defect", "small_recall", "recall of defects under 2,000 px"),
    ("Defects", "defect", "precision", "precision: predicted defects that are real"),
    ("Defects", "defect", "f1", "F1"),
]


def _headline_table(metrics: Mapping[str, Any]) -> str:
    a, b = metrics["threshold_only"], metrics["postprocessed"]
    rows = []
    last = None
    for group, section, key, label in HEADLINE:
        if key not in a.get(section, {}):  # an eval.json written before the number existed
            continue
        span = sum(g == group for g, *_ in HEADLINE)
        head = f'<th rowspan="{span}">{group}</th>' if group != last else ""
        last = group
        va, vb = a[section][key], b[section][key]
        rows.append(
            f"<tr>{head}<td>{label}</td><td class=num>{fmt_number(va)}</td>"
            f"<td class='num strong'>{fmt_number(vb)}</td><td class=num>{_delta(va, vb)}</td></tr>"
        )
    return (
        "<table class=metrics><thead><tr><th></th><th>metric</th><th>threshold only</th>"
        "<th>post-processed</th><th>change</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _confusion_table(name: str, image: Mapping[str, Any]) -> str:
    c = image["confusion"]
    return (
        f"<table class=confusion><caption>{VARIANT_LABELS[name]}</caption>"
        "<tr><th>true \\ predicted</th><th>clean</th><th>defective</th></tr>"
        f"<tr><th>clean</th><td class=good>{c['empty_predicted_empty']}</td>"
        f"<td class=bad>{c['empty_predicted_defect']}</td></tr>"
        f"<tr><th>defective</th><td class=bad>{c['defect_predicted_empty']}</td>"
        f"<td class=good>{c['defect_predicted_defect']}</td></tr></table>"
    )


def _counts_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for name in ("threshold_only", "postprocessed"):
        i, d = metrics[name]["image"], metrics[name]["defect"]
        rows.append(
            f"<tr><td>{VARIANT_LABELS[name]}</td><td class=num>{i['tp']}</td>"
            f"<td class=num>{i['fp']}</td><td class=num>{i['fn']}</td><td class=num>{i['tn']}</td>"
            f"<td class=num>{d['found']} / {d['n_true']}</td>"
            f"<td class=num>{d['matched']} / {d['n_pred']}</td></tr>"
        )
    iou = metrics["postprocessed"]["defect"]["iou_threshold"]
    return (
        "<table class=metrics><thead><tr><th></th><th>images TP</th><th>FP</th><th>FN</th>"
        f"<th>TN</th><th>true defects found (IoU &ge; {iou:g})</th>"
        "<th>predicted defects matched</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _threshold(d: Mapping[str, Any]) -> float:
    """The threshold of a post-processing dict (class 1's for per-class settings)."""
    return d["classes"][0]["threshold"] if "classes" in d else d["threshold"]


def _pp_text(d: Mapping[str, Any]) -> str:
    if "classes" in d:
        texts = [_pp_text(c) for c in d["classes"]]
        if len(set(texts)) == 1:
            return f"every class: {texts[0]}"
        return "; ".join(f"class {i}: {t}" for i, t in enumerate(texts, start=1))
    parts = [f"threshold {d['threshold']:g}"]
    if d.get("gate", "none") == "hard":
        parts.insert(0, f"hard gate: empty below image probability {d['gate_threshold']:g}")
    elif d.get("gate", "none") == "soft":
        parts.insert(0, "soft gate: probabilities x image probability")
    for k in ("min_component_area", "min_total_area", "dilate", "close"):
        if d[k]:
            parts.append(f"{k.replace('_', ' ')} {d[k]}")
    if d["fill_holes"]:
        parts.append("fill holes")
    return ", ".join(parts)


def _settings(result: Mapping[str, Any]) -> str:
    m = result["metrics"]
    source = "tuned sidecar" if result.get("tuned_sidecar") else "defaults"
    if result.get("overrides"):
        source += " + " + ", ".join(f"{k}={v}" for k, v in result["overrides"].items())
    n, n_def = result["n_images"], result["n_defective"]
    items = [
        ("checkpoint", result["checkpoint"]),
        ("data", result["data_root"]),
        ("split", f"{result['split']}: {n} images, {n_def} defective, {n - n_def} clean"),
        ("threshold only", _pp_text(m["threshold_only"]["postprocess"]) + " (the model's)"),
        ("post-processed", f"{_pp_text(m['postprocessed']['postprocess'])} ({source})"),
        ("test-time augmentation", ", ".join(result["tta"]) or "none"),
        (
            "speed",
            f"{result['images_per_s']} images/s on {_runtime(result)} ({result['seconds']} s)",
        ),
    ]
    check = result.get("runtime_check")
    if check:
        items.append(
            (
                "runtime check",
                f"{'within' if check['ok'] else 'OVER'} tolerance: per-image Dice "
                f"{fmt_number(check['dice_per_image'], 4)} vs {fmt_number(check['reference_dice_per_image'], 4)}"
                f" on PyTorch fp32 (drop {check['dice_drop']:+.4f}, tolerance "
                f"{check['tolerance']}); pixel IoU {fmt_number(check['iou'], 4)} vs "
                f"{fmt_number(check['reference_iou'], 4)}",
            )
        )
    if result.get("skipped"):
        items.append(("skipped", ", ".join(s["image_id"] for s in result["skipped"])))
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    return f"<dl class=settings>{body}</dl>"


def _swatch(c: int) -> str:
    return f'<i class=sw style="background:rgb{CLASS_RGB.get(c, (128, 128, 128))}"></i>'


def class_text(names: Mapping[str, str], c: int | str) -> str:
    """A class as the report shows it: ``scratch (3)``, or ``class 3`` when it has no name."""
    name = names.get(str(c), str(c))
    return f"class {c}" if name == str(c) else f"{name} ({c})"


def _class_table(metrics: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Per-class pixel numbers and the competition's metric, for a multi-class model."""
    a, b = metrics["threshold_only"], metrics["postprocessed"]
    rows = [
        "<tr><td><b>competition metric</b>: mean Dice over (image, class) pairs</td><td></td>"
        f"<td class=num>{fmt_number(a['kaggle_dice'])}</td><td class='num strong'>"
        f"{fmt_number(b['kaggle_dice'])}</td><td class=num>{_delta(a['kaggle_dice'], b['kaggle_dice'])}"
        "</td><td></td><td></td></tr>"
    ]
    for ca, cb in zip(a["classes"], b["classes"]):
        c = cb["class"]
        rows.append(
            f"<tr><td>{_swatch(c)}{html.escape(class_text(names, c))}</td>"
            f"<td class=num>{cb['n_images_with']}</td>"
            f"<td class=num>{fmt_number(ca['dice_per_image'])}</td>"
            f"<td class='num strong'>{fmt_number(cb['dice_per_image'])}</td>"
            f"<td class=num>{_delta(ca['dice_per_image'], cb['dice_per_image'])}</td>"
            f"<td class=num>{fmt_number(cb['iou'])}</td><td class=num>{fmt_number(cb['dice'])}</td></tr>"
        )
    return (
        "<table class=metrics><thead><tr><th></th><th>images with it</th>"
        "<th>per-image Dice, threshold only</th><th>post-processed</th><th>change</th>"
        "<th>IoU (post-processed)</th><th>Dice (all pixels)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _class_label(name: str, names: Mapping[str, str]) -> str:
    """A confusion-matrix class name (with its colour swatch and name for a numbered class)."""
    if not name.isdigit():
        return html.escape(name)
    return _swatch(int(name)) + html.escape(class_text(names, name))


def _segmentation_table(metrics: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Per-class IoU, Dice, precision and recall (background included), post-processed."""
    a, b = metrics["threshold_only"]["segmentation"], metrics["postprocessed"]["segmentation"]
    rows = []
    for name, cb in b["classes"].items():
        ca = a["classes"][name]
        rows.append(
            f"<tr><td>{_class_label(name, names)}</td><td class=num>{cb['pixels']:,}</td>"
            f"<td class=num>{fmt_number(ca['IoU'])}</td><td class='num strong'>{fmt_number(cb['IoU'])}</td>"
            f"<td class=num>{_delta(ca['IoU'], cb['IoU'])}</td>"
            + "".join(
                f"<td class=num>{fmt_number(cb[k])}</td>" for k in ("Dice", "Precision", "Recall")
            )
            + "</tr>"
        )
    return (
        "<table class=metrics><thead><tr><th>class</th><th>true pixels</th>"
        "<th>IoU, threshold only</th><th>IoU, post-processed</th><th>change</th><th>Dice</th>"
        "<th>Precision</th><th>Recall (Acc)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _segmentation_section(metrics: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """The field's metrics: per-class table and the pixel confusion matrices ("" for an
    eval.json written before they existed)."""
    if "segmentation" not in metrics["postprocessed"]:
        return ""
    rows = list(metrics["postprocessed"]["segmentation"]["classes"])
    uri = confusion_matrix_uri(
        {VARIANT_LABELS[v]: metrics[v]["segmentation"]["confusion"] for v in VARIANT_LABELS},
        [class_text(names, r) if r.isdigit() else r for r in rows],
    )
    return (
        "<section><h2>Segmentation metrics, background included</h2><p class=note>As "
        "mmsegmentation and the NEU papers report them, from the pixel confusion matrix over "
        "every image: each class's IoU = TP / (TP + FP + FN), Dice = 2TP / (2TP + FP + FN), "
        "precision = TP / (TP + FP) and recall = TP / (TP + FN) (mmsegmentation's Acc); mIoU, "
        "mDice and mAcc are their means over the classes, background included, and aAcc the "
        "share of all pixels labelled right. n/a: the class is absent from truth or prediction. "
        "Per class below: post-processed Dice, precision and recall.</p>"
        f"{_segmentation_table(metrics, names)}"
        '<h2 style="margin-top:16px">Pixel confusion matrix</h2><p class=note>Rows: the true '
        "class, columns: the predicted one; each cell holds its pixel count and its share of "
        "the row (the true class's pixels), coloured by that share.</p>"
        f'<div class=plots><img alt="pixel confusion matrix" src="{uri}"></div></section>'
    )


def _runtime(result: Mapping[str, Any]) -> str:
    """``openvino bf16 on cpu`` (older eval.json files: the device only)."""
    if result.get("runtime"):
        return f"{result['runtime']} {result.get('precision', '')} on {result['device']}"
    return str(result["device"])


def _kpis(metrics: Mapping[str, Any]) -> str:
    a, b = metrics["threshold_only"], metrics["postprocessed"]
    cards = []
    if "kaggle_dice" in b:
        cards.append(
            f"<div class=kpi><div class=kv>{fmt_number(b['kaggle_dice'])}</div>"
            "<div class=kl>competition metric (mean Dice over image, class)</div><div class=kd>"
            f"{_delta(a['kaggle_dice'], b['kaggle_dice'])} vs threshold only</div></div>"
        )
    for section, key, label in (
        ("pixel", "dice_per_image", "per-image Dice (Kaggle)"),
        ("pixel", "iou", "pixel IoU"),
        ("segmentation", "mIoU", "mIoU (background + classes)"),
        ("image", "recall", "defective images flagged"),
        ("image", "specificity", "clean images left clean"),
        ("defect", "recall", "defects found"),
    ):
        if key not in b.get(section, {}):  # an eval.json written before the number existed
            continue
        cards.append(
            f"<div class=kpi><div class=kv>{fmt_number(b[section][key])}</div>"
            f"<div class=kl>{label}</div><div class=kd>{_delta(a[section][key], b[section][key])}"
            " vs threshold only</div></div>"
        )
    return "<div class=kpis>" + "".join(cards) + "</div>"


def worst_first(images: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Images sorted by post-processed per-image Dice, lowest first; more wrong pixels first."""

    def key(r: Mapping[str, Any]) -> tuple[float, int]:
        p = r["postprocessed"]
        return p["dice"], -(p["fp"] + p["fn"])

    return sorted(images, key=key)


def _panel(rank: int, row: Mapping[str, Any], load: PanelLoader, width: int) -> str:
    image, pred, target = load(row["image_id"])
    p = row["postprocessed"]
    n_true, found, _, _ = p["defects"]
    facts = (
        f"<span>Dice <b>{p['dice']:.3f}</b></span><span>true {row['gt_pixels']} px</span>"
        f"<span>predicted {p['pred_pixels']} px</span>"
        f"<span class={'fp' if p['fp'] else 'zero'}>false {p['fp']} px</span>"
        f"<span class={'fn' if p['fn'] else 'zero'}>missed {p['fn']} px</span>"
        f"<span>defects found {found}/{n_true}</span>"
        f"<span>max prob {row['max_prob']:.2f}</span>"
    )
    iid = html.escape(row["image_id"])
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    pictures = [("prediction against ground truth", overlay(image, pred > 0, target > 0, width))]
    if "classes" in p:  # class-id masks: the classes in their colours, predicted and true
        pictures += [
            ("predicted classes", class_overlay(image, pred, width)),
            ("true classes", class_overlay(image, target, width)),
        ]
    imgs = "".join(
        f'<img alt="{iid}: {what}" title="{what}" width={width} height={height} '
        f'src="{png_data_uri(picture)}">'
        for what, picture in pictures
    )
    return (
        f'<figure class=panel id="img-{iid}"><figcaption><b>#{rank}</b> <code>{iid}</code>'
        f"{facts}</figcaption>{imgs}</figure>"
    )


CSS = """
:root{--ink:#0f172a;--mute:#64748b;--line:#e2e8f0;--bg:#f8fafc;--good:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#1e293b;color:#f1f5f9;padding:18px 32px}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:4px 0 0;color:#cbd5e1}
main{max-width:1240px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:16px;margin:0 0 12px}
p.note{color:var(--mute);margin:4px 0 10px;font-size:13px}
.kpis{display:flex;gap:12px;flex-wrap:wrap}
.kpi{flex:1 1 160px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.kv{font-size:26px;font-weight:600}.kl{color:var(--mute)}.kd{font-size:12px;color:var(--mute)}
dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dt{color:var(--mute)}dd{margin:0;word-break:break-all}
table{border-collapse:collapse}
table.metrics{width:100%}
table.metrics th,table.metrics td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:left}
table.metrics th{font-weight:600;color:var(--mute)}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.strong{font-weight:600}
.up{color:var(--good)}.down{color:var(--bad)}.same{color:var(--mute)}.na{color:var(--mute)}
.confusions{display:flex;gap:32px;flex-wrap:wrap}
table.confusion caption{font-weight:600;text-align:left;padding-bottom:4px}
table.confusion th,table.confusion td{border:1px solid var(--line);padding:6px 14px}
table.confusion td{text-align:center;font-size:18px;font-variant-numeric:tabular-nums}
td.good{background:#f0fdf4;color:var(--good)}td.bad{background:#fef2f2;color:var(--bad)}
img{max-width:100%;height:auto;display:block}
.plots{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.plots img{flex:1 1 420px;min-width:0}
.legend span{display:inline-block;margin-right:16px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
figure.panel{margin:0 0 18px;padding-bottom:14px;border-bottom:1px solid var(--line)}
figure.panel img{margin-top:4px;image-rendering:auto}
figcaption{display:flex;gap:14px;flex-wrap:wrap;align-items:baseline;font-size:13px}
figcaption code{font-size:13px}
.fp{color:var(--bad)}.fn{color:#1d4ed8}.zero{color:var(--mute)}
footer{color:var(--mute);font-size:12px;text-align:center;margin-top:24px}
"""

# Counts the pictures that decoded, so a headless browser test can read the result from the DOM.
SCRIPT = """
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + all.length);
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render_report(
    result: Mapping[str, Any],
    load_panel: PanelLoader | None,
    max_panels: int = 50,
    panel_width: int = 800,
) -> str:
    """The report page as one HTML string.

    Args:
        result: The evaluation (``eval.json``'s content, see :func:`steelseg.evaluate.evaluate`).
        load_panel: ``image_id -> (image uint8, predicted mask, true mask)``, all (H, W); None
            for no per-image panels.
        max_panels: Panels shown, worst first.
        panel_width: Width in pixels of each panel picture (full images are 1600 wide).
    """
    m = result["metrics"]
    names = result.get("class_names", {})  # eval.json from before class names: the ids
    used = _threshold(m["postprocessed"]["postprocess"])
    model_t = _threshold(m["threshold_only"]["postprocess"])
    images = result["images"]
    worst = worst_first(images)[: max_panels if load_panel else 0]
    panels = "".join(_panel(i + 1, r, load_panel, panel_width) for i, r in enumerate(worst))
    dice = [r["postprocessed"]["dice"] for r in images]
    clean = [r["gt_pixels"] == 0 for r in images]
    title = f"Evaluation of {Path(result['checkpoint']).name} on {result['split']}"
    legend = "".join(
        f'<span><i class=sw style="background:rgb{rgb}"></i>{label}</span>'
        for rgb, label in (
            (TP_RGB, "defect found (true positive)"),
            (FP_RGB, "false alarm (false positive)"),
            (FN_RGB, "missed defect (false negative)"),
        )
    )
    if "classes" in m["postprocessed"]:
        legend += "".join(
            f"<span>{_swatch(c)}{html.escape(class_text(names, c))}</span>"
            for c in range(1, len(m["postprocessed"]["classes"]) + 1)
        )
    classes = (
        "<section><h2>Defect classes</h2><p class=note>Per-image Dice of each class counts an "
        "empty prediction on an image without that class as 1; the competition's metric is "
        "its mean over every (image, class) pair. The numbers above score the merged mask "
        f"(any class).</p>{_class_table(m, names)}</section>"
        if "classes" in m["postprocessed"]
        else ""
    )
    curve_uri = threshold_curve_uri(result["threshold_curve"], used, model_t)
    shown = f"{len(worst)} of {len(images)}" if len(worst) < len(images) else f"all {len(images)}"
    subtitle = f"{result['n_images']} images ({result['n_defective']} defective)"
    body = f"""{_kpis(m)}
<section><h2>Run</h2>{_settings(result)}</section>
<section><h2>Headline metrics</h2>
<p class=note>Per-image Dice counts an empty prediction on a clean image as 1 (the Kaggle rule).
Image level: an image is flagged when its predicted mask is not empty. Defect level: a true
defect (connected component) is found when a predicted one overlaps it with IoU &ge;
{m["postprocessed"]["defect"]["iou_threshold"]:g}. n/a: undefined (e.g. no clean images).</p>
{_headline_table(m)}</section>
{_segmentation_section(m, names)}
{classes}
<section><h2>Clean vs defective images</h2><div class=confusions>
{_confusion_table("threshold_only", m["threshold_only"]["image"])}
{_confusion_table("postprocessed", m["postprocessed"]["image"])}</div>
<h2 style="margin-top:16px">Detection counts</h2>{_counts_table(m)}</section>
<section><h2>Threshold curve and per-image Dice</h2>
<p class=note>Left: metrics at each probability threshold, before any area filter or
morphology. Right: how the post-processed per-image Dice is spread over the images.</p>
<div class=plots><img alt="threshold curve" src="{curve_uri}">
<img alt="per-image Dice histogram" src="{dice_histogram_uri(dice, clean)}"></div></section>
<section><h2>Images, worst first ({shown})</h2>
<p class=note>Sorted by post-processed per-image Dice. Each panel is the full strip, scaled
down, with the post-processed prediction compared to the ground truth (for a model with
classes, then its predicted classes and the true ones in their colours).</p><p class=legend>{legend}</p>
{panels or "<p class=note>No panels.</p>"}</section>
"""
    return page(title, subtitle, body, "eval.json", heading="Steel defect segmentation: " + title)


def write_report(
    result: Mapping[str, Any],
    load_panel: PanelLoader | None,
    path: str | os.PathLike,
    max_panels: int = 50,
    panel_width: int = 800,
) -> Path:
    """Render :func:`render_report` and write it atomically to ``path``; return the path."""
    path = Path(path)
    write_page(path, render_report(result, load_panel, max_panels, panel_width))
    return path
