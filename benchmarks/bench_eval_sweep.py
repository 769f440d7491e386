"""Threshold-sweep benchmark: our one-pass sweeps vs a straightforward per-threshold loop.

Generates pipeline-like CAMs (random 8×8/16×16 fields resized bicubically, and structured
Gaussian blobs), runs both protocols' sweeps (TS-CAM frame 512, wsol frame 224, 100 thresholds)
with ours and the baseline loop in one process, checks they agree, and prints images/s, the ratio
and the extrapolated time for 50,000 images (one core, and with --workers processes).

    .venv/bin/python benchmarks/bench_eval_sweep.py --images 60
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from eval_fixtures import smooth_random_cam  # noqa: E402

from genpromp.evaluation.metrics import threshold_list  # noqa: E402
from genpromp.evaluation.tscam import (  # noqa: E402
    prepare_tscam_cam, tscam_sweep_boxes, tscam_sweep_boxes_reference, tscam_sweep_ious,
)
from genpromp.evaluation.wsol import prepare_wsol_cam, wsol_sweep_ious, wsol_sweep_ious_reference  # noqa: E402


def structured_cam(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    c = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        cx, cy, s = rng.uniform(5, 60), rng.uniform(5, 60), rng.uniform(10, 300)
        c += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / s)
    c += 0.1 * smooth_random_cam(rng, size)
    return (c / c.max()).astype(np.float32)


def run(cams, thresholds, fast):
    gt_t, gt_w = np.array([[60, 80, 400, 450]]), np.array([[26, 35, 175, 197]])
    out = []
    t0 = time.perf_counter()
    for cam in cams:
        u = prepare_tscam_cam(cam, 512)
        boxes = tscam_sweep_boxes(u, thresholds) if fast else tscam_sweep_boxes_reference(u, thresholds)
        w = prepare_wsol_cam(cam, 224)
        v = wsol_sweep_ious(w, thresholds, gt_w) if fast else wsol_sweep_ious_reference(w, thresholds, gt_w)
        out.append((tscam_sweep_ious(boxes, gt_t), *v))
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=60, help="CAMs per kind (random, structured)")
    ap.add_argument("--workers", type=int, default=2, help="processes assumed for the 50k extrapolation")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    thresholds = threshold_list(0.0, 1.0, 0.01)
    for kind, make in (("random", smooth_random_cam), ("structured", structured_cam)):
        cams = [make(rng) for _ in range(args.images)]
        t_ref, ref = run(cams, thresholds, fast=False)
        t_fast, fast = run(cams, thresholds, fast=True)
        same = all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(ref, fast))
        ips_ref, ips_fast = len(cams) / t_ref, len(cams) / t_fast
        print(f"{kind:10s} loop {ips_ref:7.1f} img/s | ours {ips_fast:7.1f} img/s | ratio {t_ref / t_fast:4.2f}x | "
              f"identical={same} | 50k: ours {50000 / ips_fast / 60:5.1f} min on 1 core, "
              f"{50000 / ips_fast / 60 / args.workers:5.1f} min on {args.workers}; loop {50000 / ips_ref / 60:5.1f} min "
              "(both protocols, 100 thresholds)")


if __name__ == "__main__":
    main()
