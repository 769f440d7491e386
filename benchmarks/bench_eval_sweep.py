"""Evaluation sweep benchmark: ours vs the straightforward per-threshold loop, measured with worker processes.

Generates pipeline-like 64×64 CAMs (half random 8×8/16×16 fields resized bicubically, half
structured Gaussian blobs + noise), and scores them with the **configured** evaluation (both
protocols as in config/config.yaml: wsolevaluation sweep at 224, TS-CAM curve at 512, Loc at
cam_thr), per image exactly as `genpromp evaluate` does (`evaluate_image`), in ``--workers``
processes. The baseline is the straightforward loop (one threshold → one findContours on the full
frame, wsolevaluation's structure), run the same way on ``--ref-images`` of the same CAMs; the
two must agree exactly on those. Prints images/s, the measured-rate extrapolation to 50,000
images, the ratio, and peak RSS (parent and largest worker).

    .venv/bin/python benchmarks/bench_eval_sweep.py --images 2000 --workers 2
"""

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from eval_fixtures import smooth_random_cam  # noqa: E402

from genpromp.evaluation.evaluate import settings_from_params  # noqa: E402
from genpromp.evaluation.evaluator import ImageInput, evaluate_image  # noqa: E402
from genpromp.evaluation.metrics import (  # noqa: E402
    box_iou_matrix, scale_boxes_tscam, scale_boxes_wsol, tscam_box,
)
from genpromp.evaluation.tscam import tscam_sweep_boxes_reference, tscam_sweep_ious  # noqa: E402
from genpromp.evaluation.wsol import wsol_sweep_ious_reference  # noqa: E402

import cv2  # noqa: E402


def structured_cam(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    c = np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):
        cx, cy, s = rng.uniform(5, 60), rng.uniform(5, 60), rng.uniform(10, 300)
        c += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / s)
    c += 0.1 * smooth_random_cam(rng, size)
    return (c / c.max()).astype(np.float32)


def make_inputs(n, seed):
    """n ImageInputs: alternating random / structured maps; 1 in 5 has a different top-1 map."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cam = (smooth_random_cam if i % 2 == 0 else structured_cam)(rng)
        w, h = int(rng.integers(200, 500)), int(rng.integers(200, 500))
        gt = np.array([[w * 0.15, h * 0.2, w * 0.75, h * 0.85]])
        wrong = i % 5 == 4
        top5 = (1, 0, 2, 3, 4) if wrong else (0, 1, 2, 3, 4)
        maps = {"gt": (0, cam), "top1": (1, structured_cam(rng)) if wrong else (0, cam)}
        out.append(ImageInput(f"img{i}", 0, w, h, gt, maps, top5))
    return out


def _straight_prepare(cam, frame, interpolation, dtype):
    """Resize, min-max and ×255 truncation, each step in ``dtype`` (float32 TS-CAM, float64 wsolevaluation)."""
    r = cv2.resize(np.asarray(cam, dtype), (frame, frame), interpolation=interpolation)
    lo, hi = r.min(), r.max()
    r = np.zeros_like(r) if hi == lo else (r - lo) / (hi - lo)
    return (r * r.dtype.type(255)).astype(np.uint8)


def reference_image(inp, settings):
    """The straightforward loop: per-threshold tscam_box / wsol_boxes on full frames."""
    gt_t = scale_boxes_tscam(inp.gt_boxes, inp.width, inp.height, settings.frame)
    u8 = _straight_prepare(inp.maps["gt"][1], settings.frame, cv2.INTER_LINEAR, np.float32)
    box = tscam_box(u8, settings.cam_thr)
    u8_top1 = _straight_prepare(inp.maps["top1"][1], settings.frame, cv2.INTER_LINEAR, np.float32)
    iou_top1 = float(box_iou_matrix(tscam_box(u8_top1, settings.cam_thr), gt_t).max())
    ts = tscam_sweep_ious(tscam_sweep_boxes_reference(u8, settings.tscam_thresholds), gt_t)
    gt_w = scale_boxes_wsol(inp.gt_boxes, inp.width, inp.height, settings.wsol_frame)
    v1, v2 = wsol_sweep_ious_reference(_straight_prepare(inp.maps["gt"][1], settings.wsol_frame, cv2.INTER_CUBIC,
                                                         np.float64),
                                       settings.thresholds, gt_w)
    return box, iou_top1, ts, v1, v2


def ours_image(inp, settings):
    r = evaluate_image(inp, settings)
    return r.box_gt, r.iou_top1, r.tscam_ious, r.wsol_v1, r.wsol_v2


def _chunk(args):
    fn, inputs, settings = args
    c0 = time.process_time()
    out = [fn(inp, settings) for inp in inputs]
    return out, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(fn, inputs, settings, workers, chunk=25):
    """Score ``inputs`` in ``workers`` processes (chunks of ``chunk`` images).

    Returns (wall seconds, results, worker CPU seconds, largest worker RSS kB)."""
    jobs = [(fn, inputs[i:i + chunk], settings) for i in range(0, len(inputs), chunk)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_chunk, jobs))
    return (time.perf_counter() - t0, [r for p, _, _ in parts for r in p], sum(c for _, c, _ in parts),
            max(rss for _, _, rss in parts))


def same(a, b):
    box_a, top1_a, *arrs_a = a
    box_b, top1_b, *arrs_b = b
    return (list(box_a) == list(box_b) and float(top1_a) == float(top1_b)
            and all(np.asarray(x).dtype == np.asarray(y).dtype == np.float64 and np.array_equal(x, y)
                    for x, y in zip(arrs_a, arrs_b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="CAMs scored by ours (default 2000)")
    ap.add_argument("--ref-images", type=int, default=200, help="CAMs scored by the straightforward loop (and compared)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for both (default 2)")
    ap.add_argument("--config", default=str(ROOT / "config" / "config.yaml"), help="config whose evaluation section is used")
    ap.add_argument("--cam-thr", type=float, default=0.23, help="TS-CAM cam_thr")
    args = ap.parse_args()
    settings = settings_from_params(yaml.safe_load(Path(args.config).read_text())["evaluation"], args.cam_thr)
    inputs = make_inputs(args.images, seed=0)
    print(f"settings: protocols {settings.protocols}, wsol {len(settings.thresholds)} thresholds at "
          f"{settings.wsol_frame}², TS-CAM curve {len(settings.tscam_thresholds)} thresholds at {settings.frame}², "
          f"cam_thr {settings.cam_thr}; {args.workers} worker processes")
    load = os.getloadavg()[0]
    t_ours, ours, cpu_ours, rss_ours = run(ours_image, inputs, settings, args.workers)
    n_ref = min(args.ref_images, args.images)
    t_ref, ref, cpu_ref, rss_ref = run(reference_image, inputs[:n_ref], settings, args.workers)
    identical = all(same(a, b) for a, b in zip(ours[:n_ref], ref))
    ips, ips_ref = args.images / t_ours, n_ref / t_ref
    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ours: {args.images} images in {t_ours:.1f} s = {ips:.1f} img/s -> 50,000 images in "
          f"{50000 / ips / 60:.2f} min ({'meets' if 50000 / ips < 300 else 'MISSES'} the 5 min requirement)")
    print(f"loop: {n_ref} images in {t_ref:.1f} s = {ips_ref:.1f} img/s -> 50,000 images in {50000 / ips_ref / 60:.2f} min")
    print(f"ratio ours/loop: {ips / ips_ref:.2f}x wall, {(cpu_ref / n_ref) / (cpu_ours / args.images):.2f}x CPU "
          f"| identical on {n_ref} images: {identical}")
    cpu_ms = 1000 * cpu_ours / args.images
    print(f"CPU per image: ours {cpu_ms:.2f} ms, loop {1000 * cpu_ref / n_ref:.2f} ms -> 50,000 images on "
          f"{args.workers} otherwise idle cores: {50000 * cpu_ms / 1000 / args.workers / 60:.2f} min "
          f"(1-min load average at start {load:.1f} on {os.cpu_count()} cores)")
    print(f"peak RSS: parent {parent_rss:.0f} MiB, largest worker {max(rss_ours, rss_ref) / 1024:.0f} MiB")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
