"""Section ``rle``, (e): steelseg.rle's decode and encode against scripts/bench_rle.py's per-run
Python loop and ``np.where`` encoder (the two benchmarks race the same code), on the synthetic
set's rows. JSON ``rle``; targets: decode >= 3x the loop, encode >= 1x ``np.where``."""

from __future__ import annotations

import logging

import bench_rle
from bench.context import Bench

log = logging.getLogger("benchmark")


def run(bench: Bench) -> None:
    from steelseg import rle

    d = bench.data()
    rows = rle.read_annotations(d["root"] / "train.csv")["EncodedPixels"].tolist()
    rows = rows[: bench.args.rle_rows]
    masks = [rle.decode(s) for s in rows]
    repeat = 3
    t = {
        "decode_loop_us": bench_rle.best_of(bench_rle.loop_decode, rows, repeat),
        "decode_us": bench_rle.best_of(rle.decode, rows, repeat),
        "encode_where_us": bench_rle.best_of(bench_rle.where_encode, masks, repeat),
        "encode_us": bench_rle.best_of(rle.encode, masks, repeat),
    }
    out = {k: round(v, 1) for k, v in t.items()} | {"rows": len(rows)}
    out["decode_speedup"] = round(t["decode_loop_us"] / t["decode_us"], 2)
    out["encode_speedup"] = round(t["encode_where_us"] / t["encode_us"], 2)
    bench.results["rle"] = out
    log.info("rle %s", out)
