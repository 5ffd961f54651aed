"""Benchmark steelseg.rle against the usual Kaggle-kernel RLE code, side by side, same rows.

    python scripts/bench_rle.py                      # rows from the synthetic generator
    python scripts/bench_rle.py --csv path/to/train.csv   # real rows (either layout)

Prints microseconds per mask and the ratios. Targets: decode >= 3x the per-run loop; encode at
least as fast as the common vectorised ``np.where`` encoder; decode into a preallocated buffer
for bulk work.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from steelseg import rle


def loop_decode(s: str, shape: tuple[int, int] = (256, 1600)) -> np.ndarray:
    """The per-run Python loop found in most Severstal kernels."""
    h, w = shape
    m = np.zeros(h * w, dtype=np.uint8)
    v = s.split()
    for start, length in zip(v[0::2], v[1::2]):
        m[int(start) - 1 : int(start) - 1 + int(length)] = 1
    return m.reshape(w, h).T


def where_encode(mask: np.ndarray) -> str:
    """The common vectorised encoder (pad, compare shifted, np.where)."""
    pixels = mask.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def synthetic_rows(n: int, seed: int) -> list[str]:
    """Defect rows from steelseg's synthetic generator (no Kaggle data needed)."""
    from steelseg import synth

    rng = np.random.default_rng(seed)
    rows: list[str] = []
    while len(rows) < n:
        _, masks = synth.make_image(rng)
        rows += [rle.encode(m) for m in masks.values() if m.any()]
    return rows[:n]


def best_of(fn, items, repeat: int) -> float:
    """Best wall time per item (microseconds) over ``repeat`` passes; results are discarded."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t)
    return best / len(items) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", help="a Severstal train.csv (either layout); default: synthetic rows")
    p.add_argument("--n", type=int, default=1000, help="rows to time")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.csv:
        rows = rle.read_annotations(args.csv)["EncodedPixels"].tolist()[: args.n]
        source = args.csv
    else:
        rows = synthetic_rows(args.n, seed=0)
        source = "synthetic generator"
    masks = [rle.decode(s) for s in rows]
    for s, m in zip(rows[:200], masks):  # the contestants must agree before they race
        assert np.array_equal(loop_decode(s), m) and where_encode(m) == rle.encode(m) == s

    buf = np.empty((rle.SHAPE[1], rle.SHAPE[0]), np.uint8)
    t = {
        "alloc (np.zeros)": best_of(lambda s: np.zeros(rle.SHAPE, np.uint8), rows, args.repeat),
        "decode: per-run loop": best_of(loop_decode, rows, args.repeat),
        "decode: steelseg": best_of(rle.decode, rows, args.repeat),
        "decode: steelseg, out=buffer": best_of(
            lambda s: rle.decode(s, out=buf), rows, args.repeat
        ),
        "encode: np.where": best_of(where_encode, masks, args.repeat),
        "encode: steelseg": best_of(rle.encode, masks, args.repeat),
    }
    runs = np.mean([len(s.split()) / 2 for s in rows])
    print(f"{len(rows)} rows from {source}, {runs:.0f} runs per row on average")
    for name, us in t.items():
        print(f"  {name:32s} {us:8.1f} us/mask")
    loop = t["decode: per-run loop"]
    print(
        f"decode speed-up vs loop:          {loop / t['decode: steelseg']:.1f}x "
        f"(into a buffer: {loop / t['decode: steelseg, out=buffer']:.1f}x; target >= 3x)"
    )
    print(
        f"encode speed-up vs np.where:      {t['encode: np.where'] / t['encode: steelseg']:.2f}x "
        "(target >= 1x)"
    )


if __name__ == "__main__":
    main()
